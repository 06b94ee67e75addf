
import pytest
import torch
from nn_helpers import Payload, tiny_unet_kwargs

from gdm.errors import CheckpointError
from gdm.io import load_checkpoint, sha256_file
from gdm.models import load_model
from gdm.nn import UNet
from gdm.nn.adm_import import import_adm_checkpoint, load_released_state_dict
from gdm.nn.presets import Preset


def tiny_preset() -> Preset:
    kw = tiny_unet_kwargs(num_classes=4, attention_order="new", num_head_channels=-1, num_heads=2)
    return Preset("tiny", "unet", kw, "a tiny UNet in the released layout")


def test_round_trip_of_a_released_layout_state_dict(tmp_path, randomize):
    preset = tiny_preset()
    source = randomize(UNet(**preset.kwargs), seed=11)
    src = tmp_path / "released.pt"
    # released files are plain state dicts (the reference trains with fp16 torso weights)
    torch.save({k: v.half() if "input_blocks" in k else v for k, v in
                source.state_dict().items()}, src)
    info = import_adm_checkpoint(preset, src, tmp_path / "ours.pt")
    assert info["format"] == "gdm-checkpoint-v1" and info["kind"] == "unet"
    assert info["preset"] == "tiny" and info["source_sha256"] == sha256_file(src)
    assert info["config"]["import"]["parameters"] == sum(p.numel() for p in source.parameters())
    payload = load_checkpoint(tmp_path / "ours.pt")
    assert payload["model_kwargs"] == preset.kwargs
    for key, value in source.state_dict().items():
        expected = value.half().float() if "input_blocks" in key else value
        assert payload["model"][key].dtype == torch.float32
        assert torch.equal(payload["model"][key], expected), key
    model = load_model(tmp_path / "ours.pt")[0]
    assert not next(model.parameters()).is_meta
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([4, 40]), torch.tensor([0, 3])
    source.load_state_dict(payload["model"])
    torch.testing.assert_close(model(x, t, y), source(x, t, y), rtol=0, atol=0)


def test_mismatches_are_listed_by_name(tmp_path):
    preset = tiny_preset()
    sd = UNet(**preset.kwargs).state_dict()
    del sd["out.2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["label_emb.weight"] = torch.zeros(5, 128)
    with pytest.raises(CheckpointError) as err:
        load_released_state_dict(UNet(**preset.kwargs), sd, "x.pt")
    msg = str(err.value)
    assert "missing keys (1): out.2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "label_emb.weight (checkpoint (5, 128), model (4, 128))" in msg
    # a DDP prefix gets a hint
    ddp = {f"module.{k}": v for k, v in UNet(**preset.kwargs).state_dict().items()}
    with pytest.raises(CheckpointError, match="'module.' prefix"):
        load_released_state_dict(UNet(**preset.kwargs), ddp, "ddp.pt")


def test_wrong_preset_is_refused(tmp_path):
    src = tmp_path / "released.pt"
    torch.save(UNet(**tiny_preset().kwargs).state_dict(), src)
    other = Preset("uncond", "unet", tiny_unet_kwargs())
    with pytest.raises(CheckpointError, match="unexpected keys.*label_emb.weight"):
        import_adm_checkpoint(other, src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()




def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": Payload(str(marker))}, src)
    with pytest.raises(CheckpointError, match="refused"):
        import_adm_checkpoint(tiny_preset(), src, tmp_path / "out.pt")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_gdm_model_loader_checks_format(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(UNet(**tiny_unet_kwargs()).state_dict(), path)
    with pytest.raises(CheckpointError, match="gdm-checkpoint-v1"):
        load_model(path)


def test_an_imported_checkpoint_can_be_sampled(tmp_path):
    """The import records the released recipe (schedule, steps) and data shape that sampling reads."""
    import numpy as np

    from gdm.config import SampleConfig
    from gdm.metrics.npz import read_samples
    from gdm.nn.presets import Preset
    from gdm.sampling import sample

    kwargs = {**tiny_unet_kwargs(), "num_classes": None}
    preset = Preset("tiny-uncond", "unet", kwargs, "test", recipe={"noise_schedule": "linear",
                                                                   "diffusion_steps": 50})
    src = tmp_path / "released.pt"
    torch.save(UNet(**kwargs).state_dict(), src)
    import_adm_checkpoint(preset, src, tmp_path / "ours.pt")
    sc = SampleConfig(respacing="4", num_samples=2, batch_size=2, chunk_size=2, device="cpu")
    run = sample(tmp_path / "ours.pt", tmp_path / "samples", sc, 0.0)
    images, labels = read_samples(run.npz)
    assert images.shape[0] == 2 and np.all(labels == -1)
