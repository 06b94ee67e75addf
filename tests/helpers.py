"""Shared tiny-setup helpers for tests (prepared digits, tiny configs)."""

from __future__ import annotations

from pathlib import Path

from gdm.config import Config, validate

TINY = {
    "unet": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4]},
    "classifier": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4]},
    "diffusion": {"diffusion_steps": 50},
    "train": {"steps": 6, "batch_size": 16, "checkpoint_every": 3, "log_every": 1, "device": "cpu"},
    "classifier_train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "eval_every": 4, "log_every": 1,
                         "device": "cpu"},
    "sample": {"respacing": "5", "num_samples": 6, "batch_size": 4, "chunk_size": 4, "device": "cpu",
               "upsample_sampler": "ddim", "upsample_respacing": "5"},
    "upsampler": {"low_resolution": 4},
    "upsampler_train": {"steps": 6, "batch_size": 16, "checkpoint_every": 3, "log_every": 1, "device": "cpu"},
}


def tiny_config(tmp_path: Path, **sections) -> Config:
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["data"] = {"out_dir": str(tmp_path / "prepared")}
    raw["pipeline"] = {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")}
    raw["eval"] = {"cache_dir": str(tmp_path / "cache")}
    raw["tracking"] = {"enabled": False}  # tests that track say so (and use a private store)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate(raw, origin="tiny test config")


class Interrupt:
    """A progress handle that raises KeyboardInterrupt after `after` advances (a killed run)."""

    def __init__(self, after: int):
        self.after, self.count = after, 0

    def advance(self, n: int = 1, **fields) -> None:
        self.count += n
        if self.count >= self.after:
            raise KeyboardInterrupt
