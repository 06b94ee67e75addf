"""Optimizer, learning-rate schedule, EMA and mixed precision: small pieces the trainers share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gdm.errors import ConfigError, GdmError


class NonFiniteLoss(GdmError):
    """The loss became NaN/inf: the run stops, the last good checkpoint stays."""


def lr_at(step: int, base_lr: float, schedule: str, total_steps: int, warmup_steps: int = 0) -> float:
    """constant; warmup (linear ramp for warmup_steps, then constant); linear (ramp, then anneal to 0)."""
    lr = base_lr
    if schedule in ("warmup", "linear") and warmup_steps > 0 and step < warmup_steps:
        lr = base_lr * (step + 1) / warmup_steps
    if schedule == "linear":
        lr = lr * max(0.0, 1.0 - step / max(1, total_steps))
    return lr


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def ema_rate(rate: float, num_updates: int, warmup: bool) -> float:
    """EMA decay; with warm-up min(rate, (1 + n) / (10 + n)) so short runs are not dominated by init."""
    return min(rate, (1.0 + num_updates) / (10.0 + num_updates)) if warmup else rate


def adamw(params, *, lr: float, weight_decay: float, fused: bool, key: str,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """torch's AdamW (Loshchilov & Hutter 2019). fused=True: one fused kernel per parameter group
    instead of a Python loop of small ops per tensor; the same update up to float32 rounding (the
    optimizer state has the same format, so a run resumes across a change of `key`)."""
    params = list(params)
    if not fused:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    except RuntimeError as exc:  # e.g. a device type without a fused kernel
        devices = sorted({p.device.type for p in params})
        raise ConfigError(f"{key}: true, but torch has no fused AdamW for {', '.join(devices)} ({exc}); "
                          f"set {key}: false") from None


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * theta, for every floating-point parameter and buffer (one
    multi-tensor multiply and add: the same per-element operations as a loop of mul_/add_)."""
    floats, values = [], []
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            floats.append(ema[name])
            values.append(value.detach())
        else:
            ema[name].copy_(value)
    if floats:
        torch._foreach_mul_(floats, rate)
        torch._foreach_add_(floats, values, alpha=1.0 - rate)


class Precision:
    """Autocast + (for fp16) dynamic loss scaling that skips non-finite steps.

    torch's GradScaler unscales every parameter group of the optimizer (the reference code's
    bug unscaled only one) and skips `optimizer.step` when a gradient is inf/nan.
    """

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        self.scaler = torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, opt: torch.optim.Optimizer, params, grad_clip: float | None) -> tuple[bool, float]:
        """Unscale, optionally clip, step. Returns (stepped, grad_norm)."""
        self.scaler.unscale_(opt)
        if grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:  # the norm only: clip_grad_norm_(inf) would multiply every gradient by 1.0
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(opt)
        self.scaler.update()
        stepped = not self.scaler.is_enabled() or self.scaler.get_scale() >= scale_before
        return stepped, float(norm)
