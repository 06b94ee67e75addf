"""Throughput of the ADM UNet: forward and training step, fp32 vs bf16 autocast, in one run.

A 32x32 UNet (model_channels 64, channel_mult (1,2,2), 2 res blocks, attention at 16 and 8,
AdaGN, BigGAN up/down, learned sigma). The training step is forward + MSE on the output + backward
+ AdamW. Timings interleave the precisions round by round (the machine is shared and noisy), and
the report gives the median of the rounds and the bf16/fp32 ratio measured in this same run.

    .venv/bin/python benchmarks/bench_unet.py [--batch 16] [--rounds 5] [--device cpu]
        [--channels-last]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from gdm.nn import UNet, count_parameters

KWARGS = {
    "image_size": 32, "in_channels": 3, "model_channels": 64, "channel_mult": (1, 2, 2),
    "num_res_blocks": 2, "attention_resolutions": (16, 8), "num_head_channels": 64,
}


def precision_context(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_forward(model, x, t, device, precision) -> float:
    model.eval()
    sync(device)
    start = time.perf_counter()
    with torch.no_grad(), precision_context(device, precision):
        model(x, t)
    sync(device)
    return time.perf_counter() - start


def time_train_step(model, opt, x, t, device, precision) -> float:
    model.train()
    sync(device)
    start = time.perf_counter()
    with precision_context(device, precision):
        out = model(x, t)
    loss = (out.float() - torch.cat([x, x], dim=1)).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true",
                    help="model weights and input in channels_last memory format")
    args = ap.parse_args()
    device = args.device
    torch.manual_seed(args.seed)
    model = UNet(**KWARGS).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    precisions = ["fp32", "bf16"]
    times: dict[str, list[float]] = {f"{k}-{p}": [] for k in ("forward", "train") for p in
                                     precisions}
    for r in range(args.warmup + args.rounds):
        for p in precisions:
            fwd = time_forward(model, x, t, device, p)
            step = time_train_step(model, opt, x, t, device, p)
            if r >= args.warmup:
                times[f"forward-{p}"].append(fwd)
                times[f"train-{p}"].append(step)
    report = {
        "device": device, "threads": torch.get_num_threads(), "batch": args.batch,
        "channels_last": args.channels_last,
        "parameters": count_parameters(model), "rounds": args.rounds,
        "images_per_s": {k: args.batch / statistics.median(v) for k, v in times.items()},
    }
    ips = report["images_per_s"]
    report["bf16_over_fp32"] = {
        "forward": ips["forward-bf16"] / ips["forward-fp32"],
        "train": ips["train-bf16"] / ips["train-fp32"],
    }
    for k, v in ips.items():
        print(f"{k:>13}: {v:8.1f} images/s")
    for k, v in report["bf16_over_fp32"].items():
        print(f"bf16/fp32 {k}: {v:.2f}x")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
