"""Data-parallel training throughput: images/s with 1 vs N torchrun ranks, and the scaling efficiency.

For each model and each rank count the script launches `python -m torch.distributed.run --standalone
--nproc-per-node N` on itself; the ranks run the trainer's step (gdm.distributed: DDP wrap,
per-position t/eps draws, the rank's share of the GLOBAL batch, hybrid loss, AdamW) on synthetic
images of the model's size, and rank 0 reports images/s after a warm-up. The data pipeline and
checkpoints are left out: this measures compute plus the gradient all-reduce.

    scaling efficiency(N) = throughput(N) / (N * throughput(1))

Models: `digits` (params.yaml's UNet on 8x8x1, global batch 64) and `adm32` (a 32x32x3 ADM UNet:
64 channels, mult 1,2,2, 2 res blocks, attention at 16 and 8; global batch 32 on CPU, 256 on CUDA).

    .venv/bin/python benchmarks/bench_ddp.py                      # CPU: 1 and 2 ranks (gloo)
    .venv/bin/python benchmarks/bench_ddp.py --device cuda --nprocs 1,2,4,8 --weak   # one GPU per rank (NCCL)

On CPU each rank gets cores // N intra-op threads (the same cores in total for every N).
`--weak` keeps the per-rank batch fixed (the global batch grows with N) instead of the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "digits": {"size": 8, "channels": 1, "batch": {"cpu": 64, "cuda": 256},
               "unet": {}},  # params.yaml's unet section
    "adm32": {"size": 32, "channels": 3, "batch": {"cpu": 32, "cuda": 256},
              "unet": {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                       "attention_resolutions": [16, 8], "num_head_channels": 64},
              },
}


def worker(args: argparse.Namespace) -> None:
    import torch
    import yaml

    from gdm import distributed
    from gdm.config import DiffusionConfig, UNetConfig
    from gdm.diffusion import build_schedule, create_timestep_sampler, training_losses
    from gdm.models import build, unet_kwargs
    from gdm.train.batches import position_generators, position_noise

    spec = MODELS[args.model]
    world = distributed.init(args.device)
    device = world.device(args.device)
    # params.yaml's unet and diffusion sections with the model's overrides (only these two are used: the
    # rest of params.yaml, sized for 8x8 digits, need not be valid at 32x32)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    unet = UNetConfig(**{**raw["unet"], **spec["unet"]})
    diffusion = DiffusionConfig(**raw["diffusion"])
    torch.manual_seed(0)
    model = build("unet", unet_kwargs(unet, spec["size"], spec["channels"])).to(device)
    net = world.wrap(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = build_schedule(diffusion.noise_schedule, diffusion.diffusion_steps)
    sampler = create_timestep_sampler("uniform", diffusion.diffusion_steps)
    B = args.batch * (world.size if args.weak else 1)
    data = torch.rand(B, spec["channels"], spec["size"], spec["size"]) * 2 - 1
    y = torch.arange(B) % 10

    def step(k: int) -> None:
        pos = world.share(B)
        gens = position_generators(0, k, pos)
        t, _ = sampler.sample_each(gens)
        noise = position_noise(gens, tuple(data.shape[1:]))
        x0 = data[pos.start : pos.stop].to(device)
        opt.zero_grad(set_to_none=True)
        terms = training_losses(schedule, lambda xt, tt: net(xt, tt, y[pos.start : pos.stop].to(device)), x0,
                                t.to(device), noise=noise.to(device), loss_type="hybrid", learn_sigma=True)
        (terms["loss"].sum() / B * world.size).backward()
        opt.step()

    for k in range(args.warmup):
        step(k)
    world.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(args.warmup, args.warmup + args.steps):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    world.barrier()
    elapsed = time.perf_counter() - t0
    if world.is_main:
        print("RESULT " + json.dumps({"images_per_s": B * args.steps / elapsed, "global_batch": B,
                                      "threads": torch.get_num_threads(),
                                      "params": sum(p.numel() for p in model.parameters())}), flush=True)


def launch(model: str, n: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    batch = args.batch or MODELS[model]["batch"][args.device]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
           "--worker", "--model", model, "--device", args.device, "--batch", str(batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + ["--weak"] * args.weak
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--nprocs", default="1,2", help="rank counts to compare, e.g. 1,2,4,8")
    ap.add_argument("--models", default="digits,adm32")
    ap.add_argument("--batch", type=int, default=0, help="global batch (per rank with --weak); 0: model default")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weak", action="store_true", help="fixed per-rank batch instead of fixed global batch")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="digits", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    counts = [int(n) for n in args.nprocs.split(",")]
    print(f"device {args.device}, {os.cpu_count()} CPU cores, {'weak' if args.weak else 'strong'} scaling, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':8s} {'ranks':>5s} {'batch':>6s} {'thr/rank':>8s} {'images/s':>10s} {'efficiency':>10s}")
    for model in args.models.split(","):
        base = None
        for n in counts:
            r = launch(model, n, args)
            base = base if base is not None else r["images_per_s"] / counts[0]
            eff = r["images_per_s"] / (n * base)
            print(f"{model:8s} {n:5d} {r['global_batch']:6d} {r['threads']:8d} {r['images_per_s']:10.1f} {eff:10.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
