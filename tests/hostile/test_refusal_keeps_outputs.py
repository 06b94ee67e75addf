"""Property: a previous good output (dataset, checkpoints, sample npz) is byte-identical after any
sequence of refused commands, including refusals aimed straight at it (same --out, same dataset name)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.cases import CASES, npz_file
from tests.hostile.conftest import run_cli


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.rglob("*")):
        h.update(str(p.relative_to(path.parent)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _aimed(w, tmp: Path) -> list[list]:
    """Refused commands whose output IS one of the good outputs."""
    bad_ckpt = tmp / "bad.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    few = npz_file(tmp, "few.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    return [
        ["train", "-q", "--params", w.params, "--set", "train.lr=0.002", "--out", w.unet_dir],  # other config
        ["train", "-q", "--params", w.params, "--set", "train.lr=.nan", "--out", w.unet_dir],
        ["sample", "-q", "--params", w.params, "--unet", bad_ckpt, "--out", w.sample_dir],
        ["sample", "-q", "--params", w.params, "--scale", "inf", "--out", w.sample_dir],
        ["evaluate", "--params", w.params, "--samples", few, "--evaluator", w.evaluator, "--out", w.samples],
        ["import-adm", "--params", w.params, "--preset", "adm-classifier-64", "--checkpoint", bad_ckpt,
         "--out", w.unet],
        ["prepare", "-q", "--params", w.params, "--set", "data.source=npz", "--set", f"data.path={few}x"],
    ]


@pytest.mark.parametrize("seed", range(3))
def test_good_outputs_are_byte_identical_after_refused_commands(seed, world, tmp_path, capsys, monkeypatch):
    goods = [world.dataset, world.unet_dir, world.sample_dir]
    before = {p: _digest(p) for p in goods}
    rng = random.Random(seed)
    monkeypatch.chdir(tmp_path)
    commands = _aimed(world, tmp_path)
    for name in rng.sample(sorted(CASES), 5):
        scratch = tmp_path / name
        scratch.mkdir()
        commands.append(CASES[name][1](world, scratch)[0])
    rng.shuffle(commands)
    for argv in commands:
        code, _, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        changed = [str(p) for p in goods if _digest(p) != before[p]]
        assert not changed, f"{argv} changed {changed}: {err}"
