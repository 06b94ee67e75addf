"""Guidance, composed outside the networks and the samplers.

Classifier guidance (ADM section 4, Algorithms 1 and 2) is a `cond_fn`; classifier-free guidance
(Ho & Salimans 2022) is a model-function wrapper (`classifier_free_guidance`), so any sampler that
takes a model function samples with it unchanged.

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


def classifier_free_guidance(labelled_model_fn, y: torch.Tensor, null_label: int, scale: float):
    """model_fn(x_t, t) with eps~ = (1 + w) eps(x_t, y) - w eps(x_t, null)  (Ho & Salimans 2022, eq. 6).

    labelled_model_fn(x, t, y) -> [B, C(, +C learned-variance channels), ...]; y: int64 labels [B];
    null_label: the label the network was trained to read as "no class" (class dropout); w = scale.
    Both evaluations run as one batch [x_t; x_t] with labels [y; null]. Only the eps channels (the
    first C = x_t.shape[1]) are combined; learned-variance channels come from the conditional pass.
    w = 0 returns the plain conditional model function: bit-identical to unguided conditional sampling.
    """
    w = float(scale)
    if w == 0:
        return lambda x_t, t: labelled_model_fn(x_t, t, y)
    null = torch.full_like(y, int(null_label))

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c = x_t.shape[0], x_t.shape[1]
        out = labelled_model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out[:n], out[n:]
        eps = (1 + w) * cond[:, :c] - w * uncond[:, :c]
        return torch.cat([eps, cond[:, c:]], dim=1)

    model_fn.scale = w
    return model_fn
