"""`gdm presets` and `gdm import-adm`, run in-process through `gdm.cli.main`."""

import json

import pytest
import torch
from nn_helpers import TABLE, Payload, tiny_unet_kwargs

from gdm.cli import main
from gdm.io import load_checkpoint, sha256_file
from gdm.models import load_model
from gdm.nn import PRESETS, UNet
from gdm.nn.presets import Preset


@pytest.fixture
def params(tmp_path):
    """A params file of our own: the repo's params.yaml is edited by others while tests run."""
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: digits\n")
    return str(path)


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `gdm <argv>`."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_presets_json_is_exactly_the_released_counts(params, capsys):
    code, out, err = run_cli(["presets", "--json", "--params", params], capsys)
    assert code == 0, err
    assert json.loads(out) == TABLE  # stdout holds the JSON object and nothing else


def test_presets_table_lists_kind_count_and_description(params, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run_cli(["presets", "--params", params], capsys)
    assert code == 0, err
    for name, count in TABLE.items():
        line = next(row for row in out.splitlines() if f" {name} " in row)
        assert PRESETS[name].kind in line and f"{count:,}" in line
        assert "released:" not in line  # shown only when the built count disagrees
    assert "64x64_classifier.pt" in out


def test_presets_reports_a_broken_config(params, capsys):
    code, out, err = run_cli(["presets", "--json", "--params", params, "--set", "unet.bogus=1"],
                             capsys)
    assert code == 2 and out == ""
    assert "unet.bogus" in err and "Traceback" not in err


def test_import_adm_round_trip_through_the_cli(tmp_path, params, capsys, monkeypatch, randomize):
    # A Preset instance cannot be named on the command line: register a tiny one for this test.
    preset = Preset("tiny-cli", "unet",
                    tiny_unet_kwargs(num_classes=4, attention_order="new", num_head_channels=-1,
                                     num_heads=2), "a tiny UNet in the released layout")
    monkeypatch.setitem(PRESETS, preset.name, preset)
    source = randomize(UNet(**preset.kwargs), seed=5)
    src, dst = tmp_path / "released.pt", tmp_path / "out" / "ours.pt"
    torch.save(source.state_dict(), src)  # released files are plain state dicts
    code, out, err = run_cli(["import-adm", "--preset", "tiny-cli", "--checkpoint", str(src),
                              "--out", str(dst), "--params", params], capsys)
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["preset"] == "tiny-cli" and lines["kind"] == "unet"
    assert lines["source sha256"] == sha256_file(src)
    assert lines["out"] == str(dst) and lines["out sha256"] == sha256_file(dst)
    assert lines["parameters"] == f"{sum(p.numel() for p in source.parameters()):,}"
    payload = load_checkpoint(dst)
    assert payload["format"] == "gdm-checkpoint-v1" and payload["preset"] == "tiny-cli"
    model = load_model(dst)[0]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_import_adm_unknown_preset_names_it_and_lists_known(tmp_path, params, capsys):
    src = tmp_path / "released.pt"
    torch.save({"w": torch.zeros(1)}, src)
    code, out, err = run_cli(["import-adm", "--preset", "adm-1024", "--checkpoint", str(src),
                              "--out", str(tmp_path / "out.pt"), "--params", params], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "'adm-1024'" in err and all(name in err for name in TABLE)
    assert not (tmp_path / "out.pt").exists()




def test_import_adm_refuses_a_pickle_payload(tmp_path, params, capsys):
    marker, src = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": Payload(str(marker))}, src)
    code, out, err = run_cli(["import-adm", "--preset", "adm-64", "--checkpoint", str(src),
                              "--out", str(tmp_path / "out.pt"), "--params", params], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "refused" in err and str(src) in err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_import_adm_wrong_network_lists_mismatches(tmp_path, params, capsys):
    src = tmp_path / "small.pt"
    torch.save(UNet(**tiny_unet_kwargs()).state_dict(), src)
    code, out, err = run_cli(["import-adm", "--preset", "adm-classifier-64", "--checkpoint",
                              str(src), "--out", str(tmp_path / "out.pt"), "--params", params],
                             capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "does not match the network" in err and "missing keys" in err
    assert not (tmp_path / "out.pt").exists()
