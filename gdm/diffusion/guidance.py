"""Classifier guidance (ADM section 4, Algorithms 1 and 2).

A guidance function is `cond_fn(x_t, t_model) -> s * grad_x log p(y | x_t)` (same shape as x_t,
float32), called by the samplers with the ORIGINAL timesteps. Composition is free: any model
(conditional or not) can be sampled with or without a cond_fn.

A cond_fn may carry a `scale` attribute; the samplers skip guidance entirely when it is 0, so
scale 0 is bit-identical to sampling without guidance (`guidance_active`).
"""

from __future__ import annotations

import torch


def guidance_active(cond_fn) -> bool:
    """True when cond_fn should be applied: present and not marked with scale == 0."""
    return cond_fn is not None and getattr(cond_fn, "scale", 1.0) != 0


def classifier_guidance(classifier_fn, scale: float, y: torch.Tensor):
    """cond_fn(x_t, t) = scale * grad_x log_softmax(classifier_fn(x_t, t))[y].

    classifier_fn(x, t) -> logits [B, K]; y: int64 labels [B]. The gradient is taken at x_t
    (as the reference code does) on a detached float32 copy, with autograd enabled even when the
    caller runs under torch.no_grad().
    """
    scale = float(scale)

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 0:
            return torch.zeros_like(x_t, dtype=torch.float32)
        with torch.enable_grad():
            x_in = x_t.detach().float().requires_grad_(True)
            logits = classifier_fn(x_in, t).float()
            log_probs = torch.log_softmax(logits, dim=-1)
            selected = log_probs[torch.arange(len(y), device=logits.device), y.to(logits.device)]
            grad = torch.autograd.grad(selected.sum(), x_in)[0]
        return grad * scale

    cond_fn.scale = scale
    return cond_fn
