"""Timestep respacing (IDDPM section 4, ADM.md section 3): sample with a subset of the steps.

Spec syntaxes for `space_timesteps`:
  "ddimN"  - the even integer stride starting at 0 that yields exactly N steps (ddim25 of 1000 ->
             0, 40, ..., 960); an error if no stride does.
  "N"      - N steps at a fractional stride (T-1)/(N-1), rounded, including 0 and T-1.
  "a,b,c"  - the T steps are cut into equal sections (the first T mod k one step longer) and
             a, b, c steps are taken from each at a fractional stride (e.g. LSUN "90,60,60,20,20").
  ""       - all T steps (no respacing).
"""

from __future__ import annotations

import torch

from gdm.diffusion.schedules import Schedule, get_named_beta_schedule, make_schedule
from gdm.errors import ConfigError


def _bad(spec, why: str) -> ConfigError:
    return ConfigError(f"timestep respacing {spec!r}: {why}")


def space_timesteps(num_timesteps: int, spec) -> list[int]:
    """Sorted original timesteps kept by the respacing `spec` (see the module docstring)."""
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        raise _bad(spec, "expected a string such as 'ddim25', '250' or '90,60,60,20,20'")
    text = spec.strip()
    if text == "":
        return list(range(num_timesteps))
    if text.startswith("ddim"):
        try:
            desired = int(text[len("ddim"):])
        except ValueError:
            raise _bad(spec, "expected 'ddimN' with an integer N") from None
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise _bad(spec, f"no integer stride gives exactly {desired} of {num_timesteps} steps")

    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise _bad(spec, "expected 'ddimN', an integer, or comma-separated integers") from None
    if any(c < 0 for c in counts) or sum(counts) < 1:
        raise _bad(spec, "step counts must be non-negative and keep at least one step")
    if len(counts) > num_timesteps:
        raise _bad(spec, f"more sections ({len(counts)}) than steps ({num_timesteps})")

    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise _bad(spec, f"section {i} has {size} steps, cannot take {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept.extend(start + round(k * stride) for k in range(count))
        start += size
    return sorted(set(kept))


def respace(schedule_or_betas, use_timesteps) -> Schedule:
    """Schedule over the kept steps only, with the same abar at those steps.

    New betas: beta'_i = 1 - abar_{k_i} / abar_{k_{i-1}} (abar before the first kept step = 1).
    `timestep_map` maps each new index to the original timestep (composed if already respaced).
    """
    if isinstance(schedule_or_betas, Schedule):
        base = schedule_or_betas
    else:
        base = make_schedule(schedule_or_betas)
    kept = sorted({int(k) for k in use_timesteps})
    if not kept or kept[0] < 0 or kept[-1] >= base.num_timesteps:
        raise ConfigError(
            f"respace: kept timesteps must be a non-empty subset of 0..{base.num_timesteps - 1}"
        )
    abar = base.alphas_cumprod[kept]
    abar_prev_kept = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    new_betas = 1.0 - abar / abar_prev_kept
    return make_schedule(new_betas, timestep_map=base.timestep_map[kept])


def build_schedule(name: str, num_timesteps: int, respacing="") -> Schedule:
    """Named schedule of `num_timesteps` steps, respaced by `respacing` ("" keeps all steps)."""
    betas = get_named_beta_schedule(name, num_timesteps)
    kept = space_timesteps(num_timesteps, respacing)
    if len(kept) == num_timesteps:
        return make_schedule(betas)
    return respace(betas, kept)
