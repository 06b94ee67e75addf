"""Where a training step's time goes: convolutions vs everything else, gdm against the reference.

    python benchmarks/bench_breakdown.py --reference /path/to/guided-diffusion [--configs 32px]
        [--threads 2] [--rounds 3] [--compile default]

For each config of bench_vs_reference.py's `train` figure, one fp32 training step of the reference
(its TrainLoop step), of gdm eager and of gdm under train.compile, each under torch.profiler for
--rounds steps (variants interleaved round by round). Per variant: the step time (profiled, so a
little slower than the benchmark's), the time in convolution kernels (forward and backward, ATen's
self time), their GFLOP/s (FLOPs counted once, on gdm's eager step, by torch.utils.flop_counter:
every variant runs the same convolutions), and the rest. The last
column answers "how fast could this step get if everything but the convolutions were free":
reference step / variant's convolution time. When that bound is near a target ratio, the target
cannot be reached by fusing the rest; it needs fewer convolution FLOPs or a faster convolution.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import bench_vs_reference as B
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

CONV_KERNELS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::thnn_conv2d",
                "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::cudnn_convolution")


def conv_flops(step) -> float:
    """FLOPs of the convolutions (forward and backward) of one call of `step`."""
    with FlopCounterMode(display=False) as fc:
        step()
    per_op = fc.get_flop_counts().get("Global", {})
    return float(sum(v for k, v in per_op.items() if "convolution" in str(k)))


def profiled(step, steps: int) -> tuple[float, float]:
    """(seconds per step, seconds per step in convolution kernels) over `steps` profiled calls."""
    with profile(activities=[ProfilerActivity.CPU]) as p:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t) / steps
    conv = sum(e.self_cpu_time_total for e in p.key_averages() if e.key in CONV_KERNELS) / steps / 1e6
    return wall, conv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--reference", required=True, help="path to a checkout of openai/guided-diffusion")
    ap.add_argument("--configs", default="32px", help=f"comma list of {', '.join(B.TRAIN_CONFIGS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=3, help="profiled rounds; each profiles 2 steps per variant")
    ap.add_argument("--compile", default="default", help="torch.compile mode of the compiled row ('none': skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ref = B.import_reference(args.reference)
    print(f"# threads {torch.get_num_threads()} torch {torch.__version__} "
          f"fp32 matmul {B.machine_speed(device):.0f} GFLOP/s", flush=True)
    for name in args.configs.split(","):
        kw, bs = B.TRAIN_CONFIGS[name]
        base, batch = B.train_inputs(kw, bs, device)
        rm = B.ref_unet(ref, kw)
        rm.load_state_dict(base.state_dict())
        variants = {"ref-fp32": B.ref_train_step(ref, rm, batch),
                    "gdm-fp32": B.gdm_train_step(copy.deepcopy(base), batch, device, "fp32", "none")}
        if args.compile != "none":
            variants[f"gdm-fp32-compile[{args.compile}]"] = B.gdm_train_step(
                copy.deepcopy(base), batch, device, "fp32", args.compile)
        for f in variants.values():  # warm-up (and compilation) outside the profiled rounds
            f()
        flops = conv_flops(variants["gdm-fp32"])  # the same convolutions in every variant
        wall: dict[str, list[float]] = {k: [] for k in variants}
        conv: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                w, c = profiled(f, 2)
                wall[k].append(w)
                conv[k].append(c)
        ref_wall = statistics.median(wall["ref-fp32"])
        for k in variants:
            w, c = statistics.median(wall[k]), statistics.median(conv[k])
            print(f"breakdown[{name} b{bs}] {k:<26} step {w * 1000:8.1f} ms  convolutions {c * 1000:7.1f} ms "
                  f"({flops / 1e9:.1f} GFLOP, {flops / c / 1e9:5.0f} GFLOP/s)  rest {(w - c) * 1000:7.1f} ms  "
                  f"x{ref_wall / w:.2f} vs ref; bound with the rest free x{ref_wall / c:.2f}", flush=True)


if __name__ == "__main__":
    main()
