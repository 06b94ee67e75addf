"""Per-sample randomness: sample i's noise depends only on (seed, i).

Every sample gets its own CPU `torch.Generator` seeded by a hash of (seed, i), and all of its
noise (x_T and every step's noise) is drawn from it in float32 on the CPU, then moved to the
target device/dtype. Sample i is therefore identical whatever batch it is generated in, on any
device, which makes sharded/resumed sampling reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser: a bijective 64-bit mix (Steele et al. 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed mixed from (seed, index); distinct indices give unrelated streams."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(index) & _MASK64)) >> 1


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded deterministically by (seed, index)."""
    gens = []
    for i in indices:
        g = torch.Generator(device="cpu")
        g.manual_seed(sample_seed(seed, i))
        gens.append(g)
    return gens


def randn_like_per_sample(
    generators: Sequence[torch.Generator],
    shape_per_sample: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> torch.Tensor:
    """[len(generators), *shape_per_sample] standard normal noise, row i from generators[i]."""
    rows = [
        torch.randn(tuple(shape_per_sample), generator=g, dtype=torch.float32, device=g.device)
        for g in generators
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)
