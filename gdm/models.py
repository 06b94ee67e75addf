"""Build networks from the typed config, and rebuild them from our checkpoints.

The config section's field names are the constructor keywords (`UNet(**cfg.unet, ...)`); the
image size and channels come from the prepared dataset's manifest, never typed twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gdm.config import ClassifierConfig, UNetConfig
from gdm.errors import CheckpointError, GdmError
from gdm.io import load_checkpoint
from gdm.nn.adm_import import FORMAT, load_released_state_dict


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` -> cuda when available, else cpu; a device that is not there -> `GdmError` naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GdmError(f"{key} {name!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: hasattr(torch.backends, "mps") and torch.backends.mps.is_available(),
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}.get(dev.type, lambda: False)
    if not available():
        raise GdmError(f"{key} '{name}' requested but {dev.type.upper()} is not available here "
                       f"(use {key}: auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GdmError(f"{key} '{name}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_finite(state: dict[str, Any], path: str | Path, what: str) -> None:
    """Refuse weights holding NaN/inf (a diverged run): they would only produce NaN images."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {what} '{key}' holds {bad} NaN/inf value(s) (a diverged run?); "
                                  "refused: use an earlier checkpoint")


def unet_kwargs(cfg: UNetConfig, image_size: int, channels: int) -> dict[str, Any]:
    kw = cfg.model_dump()
    kw["channel_mult"] = tuple(kw["channel_mult"])
    kw["attention_resolutions"] = tuple(kw["attention_resolutions"])
    return dict(image_size=image_size, in_channels=channels, **kw)


def classifier_kwargs(cfg: ClassifierConfig, image_size: int, channels: int, num_classes: int) -> dict[str, Any]:
    kw = cfg.model_dump()
    kw["channel_mult"] = tuple(kw["channel_mult"])
    kw["attention_resolutions"] = tuple(kw["attention_resolutions"])
    return dict(image_size=image_size, in_channels=channels, out_channels=num_classes, **kw)


def build(kind: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised network. Its constructors draw from torch's global generator, so this holds
    `gdm.rng.GLOBAL_RNG`: no other thread's seeded initialisation is disturbed (call it in `seeded(seed)`
    for seeded weights)."""
    from gdm.nn import build_model
    from gdm.rng import GLOBAL_RNG

    with GLOBAL_RNG:
        return build_model(kind, kwargs)


# Rebuilding a network on the meta device allocates nothing (ADM-512: 559M weights), but the first op there
# whose meta kernel is a Python reference (an Embedding's normal_, the classifier's scaled randn) imports
# torch._dynamo: ~2.5 s of every `gdm sample` process on 2 cores. Below this many weights a network is built on
# the CPU instead (milliseconds), its initial draws taken under GLOBAL_RNG and the global generator restored.
META_BUILD_MIN_WEIGHTS = 20_000_000


def _empty_model(kind: str, kwargs: dict[str, Any], num_weights: int) -> torch.nn.Module:
    """A network of `kind` whose every weight is about to be overwritten by a checkpoint's."""
    from gdm.nn import build_model
    from gdm.rng import GLOBAL_RNG  # build() takes it too (re-entrant); held here across the restore

    if num_weights >= META_BUILD_MIN_WEIGHTS:
        return build_model(kind, kwargs, device="meta")
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # restored under the lock: no other thread draws between
        return build(kind, kwargs)


def load_model(path: str | Path, *, use_ema: bool = True, kind: str | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a gdm checkpoint (EMA weights by default when present).

    Missing keys, a foreign file or weights that do not fit the recorded architecture raise
    `CheckpointError` naming the file and the keys.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gdm checkpoint (format {ckpt.get('format')!r}, expected {FORMAT!r}; "
                              "import released ADM checkpoints with `gdm import-adm`)")
    missing = [k for k in ("kind", "model_kwargs", "model") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path}: holds a {ckpt['kind']!r} model, expected a {kind!r} model")
    state = ckpt["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is not a state dict")
    check_finite(state, path, "weight")
    for rate, ema in (ckpt.get("ema") or {}).items():
        check_finite(ema if isinstance(ema, dict) else {}, path, f"EMA {rate} weight")
    if use_ema and ckpt.get("ema"):
        rate = ckpt.get("ema_use") or min(ckpt["ema"])
        if rate not in ckpt["ema"]:
            raise CheckpointError(f"{path}: EMA rate {rate!r} not in the checkpoint (has {sorted(ckpt['ema'])})")
        state = ckpt["ema"][rate]
    model = _empty_model(ckpt["kind"], ckpt["model_kwargs"], sum(v.numel() for v in state.values()
                                                                 if isinstance(v, torch.Tensor)))
    load_released_state_dict(model, state, path)  # strict; names missing / unexpected / mismatched keys
    return model.to(device).eval(), ckpt
