"""A small finished project (dataset, UNet, classifier, evaluator, samples) shared by the hostile tests.

Built once per session in-process (a few seconds); every refused command must leave it byte-identical.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import tiny_config


@dataclass(frozen=True)
class World:
    root: Path
    params: Path
    dataset: Path
    unet: Path
    unet_dir: Path
    classifier: Path
    evaluator: Path
    samples: Path
    sample_dir: Path
    raw: dict


def world_raw(root: Path) -> dict:
    cfg = tiny_config(root, train={"steps": 2, "checkpoint_every": 1, "batch_size": 8},
                      classifier_train={"steps": 2, "checkpoint_every": 2, "batch_size": 8},
                      evaluator={"steps": 3, "batch_size": 16, "width": 8, "feature_dim": 8},
                      eval={"batch_size": 64, "kid_subsets": 2, "kid_subset_size": 4},
                      pipeline={"models": {"cond": {}}})
    return cfg.to_dict()


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from gdm import stages
    from gdm.config import validate

    root = tmp_path_factory.mktemp("hostile-world")
    raw = world_raw(root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = validate(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = stages.prepare(cfg, progress=False)
        unet = Path(stages.train(cfg, "cond", progress=False)["model"])
        classifier = Path(stages.train_classifier(cfg, progress=False)["model"])
        evaluator = Path(stages.train_evaluator(cfg, progress=False)["model"])
        run = stages.sample(cfg, "cond", 0.0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return World(root, params, dataset, unet, unet.parent, classifier, evaluator, run.npz, run.npz.parent, raw)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny models run 2-10x faster than with 2 OpenMP threads on a shared
    2-core machine (barrier spinning when a core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and directory under `roots`: path -> content hash (or 'dir' / link target)."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p):
                    out[p] = "link:" + os.readlink(p)
                    continue
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changes = [f"new {p}" for p in after.keys() - before.keys()]
    changes += [f"removed {p}" for p in before.keys() - after.keys()]
    changes += [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(changes)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`gdm ARGV` in this process: (exit code, stdout, stderr)."""
    from gdm.cli import main

    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
