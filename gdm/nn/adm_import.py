"""Import the released guided-diffusion checkpoints into gdm's checkpoint format.

A released file is a plain state dict. It is loaded with `weights_only=True` (files that need
pickle code execution are refused), checked key by key and shape by shape against the preset's
network (built on the meta device, so nothing is allocated twice), loaded strictly, and written
as a "gdm-checkpoint-v1" dict:
  {"format", "kind", "preset", "model_kwargs", "model", "source_sha256", "config"}.

Caveat (ADM.md sec. 1): the "legacy" and "new" qkv layouts have identical shapes, so a checkpoint
imported under the wrong `attention_order` loads without error and produces noise. The presets
carry the right order (only adm-64 uses "new").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdm.errors import CheckpointError
from gdm.io import load_checkpoint, save_checkpoint, sha256_file
from gdm.nn.presets import Preset, build_model, count_parameters, get_preset

FORMAT = "gdm-checkpoint-v1"
_SHOW = 20  # names listed per category in a mismatch message


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def load_released_state_dict(model: nn.Module, state_dict: Mapping[str, Any],
                             source: str | Path) -> nn.Module:
    """Strictly load `state_dict` into `model`, after checking every key and shape.

    Raises CheckpointError naming the missing, unexpected and shape-mismatched keys. Tensors are
    cast to the model's dtypes. A model on the meta device gets the loaded tensors assigned.
    """
    expected = model.state_dict()
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: not a state dict: entries that are not tensors: "
                              f"{_names(sorted(map(str, not_tensors)))}")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: state dict does not match the network"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_names(mismatched)}")
        if unexpected and all(k.startswith("module.") for k in unexpected):
            parts.append("hint: keys carry a DistributedDataParallel 'module.' prefix")
        raise CheckpointError("; ".join(parts))
    on_meta = any(t.is_meta for t in expected.values())
    cast = {k: state_dict[k].to(dtype=expected[k].dtype, device="cpu" if on_meta
                                else expected[k].device) for k in expected}
    model.load_state_dict(cast, strict=True, assign=on_meta)
    return model


def _resolve(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


def import_adm_checkpoint(preset: str | Preset, checkpoint: str | Path,
                          out: str | Path) -> dict[str, Any]:
    """Convert a released checkpoint for `preset` (a name in PRESETS, or a custom Preset) to
    gdm's format at `out`. Returns the written payload without the tensors, plus "out"."""
    preset, checkpoint, out = _resolve(preset), Path(checkpoint), Path(out)
    state = load_checkpoint(checkpoint)  # weights_only=True: pickle payloads are refused
    if state.get("format") == FORMAT:
        raise CheckpointError(f"{checkpoint}: already a {FORMAT} checkpoint, nothing to import")
    model = build_model(preset.kind, preset.kwargs, device="meta")
    load_released_state_dict(model, state, checkpoint)
    payload = {
        "format": FORMAT,
        "kind": preset.kind,
        "preset": preset.name,
        "model_kwargs": dict(preset.kwargs),
        "model": model.state_dict(),
        "source_sha256": sha256_file(checkpoint),
        "config": {
            "import": {
                "source": checkpoint.name,
                "source_dtypes": sorted({str(v.dtype) for v in state.values()}),
                "parameters": count_parameters(model),
                "description": preset.description,
                "recipe": dict(preset.recipe),
            },
        },
        "data": _data_of(preset),
    }
    if "noise_schedule" in preset.recipe:  # what sampling needs, recorded as gdm's own checkpoints do
        diffusion = {"noise_schedule": preset.recipe["noise_schedule"],
                     "diffusion_steps": preset.recipe.get("diffusion_steps", 1000),
                     "loss_type": "hybrid", "timestep_sampler": "uniform"}
        payload["config"]["diffusion"] = diffusion
        if preset.kind == "classifier":
            payload["diffusion"] = diffusion
    save_checkpoint(out, payload)
    summary = {k: v for k, v in payload.items() if k != "model"}
    summary["out"] = str(out)
    return summary


def _data_of(preset: Preset) -> dict[str, Any]:
    kw = preset.kwargs
    classes = kw.get("out_channels") if preset.kind == "classifier" else kw.get("num_classes")
    return {"resolution": kw.get("image_size", kw.get("large_size")), "channels": kw["in_channels"],
            "num_classes": int(classes or 0)}
