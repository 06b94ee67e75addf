"""Execution speed-ups that leave the math alone: torch.compile (inductor) and the layout it is fed.

`train.compile` / `sample.compile` name a torch.compile mode; "none" runs eagerly (the default).
  default                       inductor kernels (fused elementwise + GroupNorm, C++ on CPU, Triton on GPU)
  reduce-overhead               + CUDA graphs on GPUs (launch overhead gone; on CPU the same as default)
  max-autotune                  + autotuned GEMM/conv choices (slow to compile; + CUDA graphs on GPUs)
  max-autotune-no-cudagraphs    autotuning without CUDA graphs
A compiled function computes the same thing as the eager one up to float32 rounding (operations
are fused and reordered); tests hold the compiled training step and sampler to the eager ones
within fp32 tolerance. Compiling needs a C++ compiler on CPU and Triton on CUDA: where one is
missing, `compile_fn` says so once (naming the config key) and returns the function unchanged,
so the run is the eager one. Random ops inside a compiled graph (dropout) use eager's
generator (`fallback_random`), so seeded runs stay seeded.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_warned: set[str] = set()


def default_warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _cxx_candidates() -> list[str]:
    """$CXX, inductor's configured compiler (torch._inductor.config.cpp.cxx), then the usual names."""
    from torch._inductor import config as inductor_config

    names = [os.environ.get("CXX", ""), *(c for c in inductor_config.cpp.cxx if c)]
    return [n for n in [*names, "g++", "c++", "clang++"] if n]


@functools.cache
def compile_problem(device_type: str) -> str | None:
    """Why torch.compile (inductor) cannot run on `device_type` here; None when it can."""
    if sys.platform == "win32":
        return "torch.compile's inductor backend is not supported on Windows by this project"
    if device_type == "cpu":
        if not any(shutil.which(c) for c in _cxx_candidates()):
            return ("no C++ compiler was found (inductor builds C++ kernels on CPU: install g++ or "
                    "clang++, or set CXX)")
        return None
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (inductor's GPU kernels need it)"
        return None
    if device_type == "mps":
        return None
    return f"inductor does not generate kernels for device type {device_type!r}"


def compile_fn(fn: Callable, mode: str, device: torch.device | str, *, key: str,
               warn: Callable[[str], None] = default_warn) -> Callable:
    """torch.compile(fn, mode=mode) with the inductor backend, or fn itself (mode "none", or no
    compiler: then a warning naming `key` says that the run is eager)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"{key}: unknown compile mode {mode!r}; expected one of {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return fn
    device_type = torch.device(device).type
    problem = compile_problem(device_type)
    if problem is not None:
        if key not in _warned:  # once per key and process
            _warned.add(key)
            warn(f"{key}={mode} asks for torch.compile, but {problem}; running eagerly instead "
                 f"(the numerics of {key}=none)")
        return fn
    from torch._inductor import config as inductor_config

    inductor_config.fallback_random = True  # dropout draws from torch's generator, as in eager
    return torch.compile(fn, mode=mode, backend="inductor", dynamic=False)


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """x with row-major strides (a copy only if its strides differ, e.g. the NHWC-derived batches of
    the reader, whose strides are channels-last even where C = 1 makes them count as contiguous).
    Layout decides the order in which dropout draws its mask (eager draws in memory order), and a
    compiled graph may lay its buffers out otherwise than eager does for such inputs, so the trainer
    feeds both its eager and its compiled step row-major batches: then the masks agree (measured,
    dropout 0.1: losses equal to ~2e-7; with the reader's strides they differed by ~1e-2). For one
    channel the eager values are the same as with the reader's strides; for RGB with dropout > 0
    the eager masks are drawn in row-major order since this change (a different, equally seeded run)."""
    expected, stride = [], 1
    for size in reversed(x.shape):
        expected.insert(0, stride)
        stride *= max(size, 1)
    return x if list(x.stride()) == expected else x.clone(memory_format=torch.contiguous_format)
