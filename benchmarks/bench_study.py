"""What the study's additions cost, relative to the base 8x8 UNet, measured in one run (interleaved rounds).

Training steps (forward + hybrid loss + backward + AdamW) of the digits networks in params.yaml:
the 8x8 UNet (`train@cond`, also `train@cfg`), the same UNet at 4x4 (`train-low@cond`), the 4->8 ADM-U
upsampler (`train-upsampler`); and model evaluations of one sampling step at batch 250: unguided,
classifier-free guided (one batched call on 2B), and the upsampler. The ratios size the demo: multiply
the base stage's measured wall time (e.g. the demo's train@cond) by them.

    .venv/bin/python benchmarks/bench_study.py [--rounds 5] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gdm.config import load_config
from gdm.diffusion import build_schedule, classifier_free_guidance, training_losses
from gdm.models import unet_kwargs
from gdm.nn import SuperResUNet, UNet


def _train_step_fn(model, schedule, batch, size, low, device, generator):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x0 = torch.randn(batch, 1, size, size, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    extra = {"low_res": torch.randn(batch, 1, low, low, generator=generator).to(device)} if low else {}

    def step():
        opt.zero_grad(set_to_none=True)
        terms = training_losses(schedule, lambda xt, tt: model(xt, tt, y=y, **extra), x0, t, noise=noise,
                                loss_type="hybrid", learn_sigma=True)
        terms["loss"].mean().backward()
        opt.step()

    return step


def _eval_fn(model_fn, batch, size, device, generator):
    x = torch.randn(batch, 1, size, size, generator=generator).to(device)
    t = torch.full((batch,), 500, device=device)

    def run():
        with torch.no_grad():
            model_fn(x, t)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps / model calls per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg = load_config(args.params)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    schedule = build_schedule("cosine", 1000)
    res, low = cfg.data.resolution, cfg.low_resolution()
    base = unet_kwargs(cfg.unet, res, 1)
    up_kw = unet_kwargs(cfg.upsampler, res, 1)
    up_kw.pop("low_resolution")
    up_kw["large_size"], up_kw["small_size"] = up_kw.pop("image_size"), low
    nets = {
        "unet 8x8": UNet(**base).to(dev),
        f"unet {low}x{low}": UNet(**{**base, "image_size": low}).to(dev),
        f"upsampler {low}->{res}": SuperResUNet(**up_kw).to(dev),
        "unet 8x8 (null row)": UNet(**{**base, "class_dropout": 0.1}).to(dev),
    }
    B = cfg.train.batch_size
    train = {
        "train unet 8x8": _train_step_fn(nets["unet 8x8"], schedule, B, res, 0, dev, g),
        f"train unet {low}x{low}": _train_step_fn(nets[f"unet {low}x{low}"], schedule, B, low, 0, dev, g),
        f"train upsampler {low}->{res}": _train_step_fn(nets[f"upsampler {low}->{res}"], schedule, B, res, low, dev, g),
    }
    SB = cfg.sample.batch_size
    y = torch.randint(0, 10, (SB,), generator=g).to(dev)
    lr = torch.randn(SB, 1, low, low, generator=g).to(dev)
    cfgnet = nets["unet 8x8 (null row)"]
    evals = {
        "eval unet 8x8": _eval_fn(lambda x, t: nets["unet 8x8"](x, t, y), SB, res, dev, g),
        "eval unet 8x8 classifier-free (w=1)": _eval_fn(
            classifier_free_guidance(lambda x, t, yy: cfgnet(x, t, yy), y, cfgnet.null_label, 1.0), SB, res, dev, g),
        f"eval unet {low}x{low}": _eval_fn(lambda x, t: nets[f"unet {low}x{low}"](x, t, y), SB, low, dev, g),
        f"eval upsampler {low}->{res}": _eval_fn(lambda x, t: nets[f"upsampler {low}->{res}"](x, t, lr, y), SB, res,
                                                 dev, g),
    }
    timings: dict[str, list[float]] = {k: [] for k in list(train) + list(evals)}
    for fn in list(train.values()) + list(evals.values()):
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in list(train.items()) + list(evals.items()):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            timings[name].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in timings.items()}
    out = {"device": str(dev), "threads": torch.get_num_threads(), "train_batch": B, "sample_batch": SB,
           "seconds": med,
           "train_ratio_vs_unet_8x8": {k: med[k] / med["train unet 8x8"] for k in train},
           "eval_ratio_vs_unet_8x8": {k: med[k] / med["eval unet 8x8"] for k in evals}}
    for k, v in med.items():
        base_key = "train unet 8x8" if k.startswith("train") else "eval unet 8x8"
        print(f"{k:40s} {v * 1000:8.2f} ms   x{v / med[base_key]:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
