"""gdm against the reference implementation (openai/guided-diffusion), side by side in one run.

    python benchmarks/bench_vs_reference.py --reference /path/to/guided-diffusion \\
        [--device cpu|cuda] [--threads 2] [--rounds 5] [--figures train,sample,mfu] [--compile default]

The reference is imported from the checkout given by --reference (never vendored; without it only
gdm's own rows are printed). Both sides get the same configuration and the same weights (the
state-dict names are the released checkpoints', so gdm's weights load strictly into the
reference's networks); a check that both compute the same outputs is printed first.

Figures (each one line: time, throughput and the ratio to the reference in this same run):
  train   one optimisation step as each trainer ships it, data loading and logging left out:
          reference = GaussianDiffusion.training_losses (hybrid loss) + MixedPrecisionTrainer
          backward/optimize (its grad/param norms) + update_ema; gdm = the loop body of
          gdm.train.diffusion (training_losses, Precision, clip_grad_norm_, AdamW, ema_update),
          eager and under train.compile, fp32 and bf16 autocast. Configs: digits (8x8, C32, 1 block),
          c64 (8x8, C64, 2 blocks), 32px (32x32x3, C64, (1,2,2), 2 blocks, attention 16,8).
  sample  classifier-guided sampling of the digits UNet + noisy classifier at --scale, batch
          --sample-batch: the reference's ddim_sample_loop with its cond_fn vs gdm's
          gdm.sampling path (DDIM-25, fewer DDIM steps, DPM-Solver++(2M); eager and under
          sample.compile; every row on "ddimN" timesteps).
          Quality at a given number of steps is not measured here: see the FID-vs-NFE table
          (benchmarks/fid_vs_nfe.py).
  mfu     CUDA only: one bf16 training step of the adm-128 UNet (FLOPs counted by
          torch.utils.flop_counter), model FLOP utilisation against --peak-tflops.
Rounds interleave every variant (the machine may be shared and noisy); medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gdm.accel import compile_fn
from gdm.config import SampleConfig
from gdm.diffusion import build_schedule, create_timestep_sampler, training_losses
from gdm.nn import EncoderUNet, UNet
from gdm.sampling import _sample_batch, compiled_for_sampling
from gdm.train.optim import Precision, adamw, ema_update

TRAIN_CONFIGS = {  # name -> (UNet kwargs, batch)
    "digits": ({"image_size": 8, "in_channels": 1, "model_channels": 32, "channel_mult": (1, 2),
                "num_res_blocks": 1, "attention_resolutions": (4,), "num_classes": 10}, 64),
    "c64": ({"image_size": 8, "in_channels": 1, "model_channels": 64, "channel_mult": (1, 2),
             "num_res_blocks": 2, "attention_resolutions": (4,), "num_classes": 10}, 64),
    "32px": ({"image_size": 32, "in_channels": 3, "model_channels": 64, "channel_mult": (1, 2, 2),
              "num_res_blocks": 2, "attention_resolutions": (16, 8), "num_head_channels": 64,
              "num_classes": 10}, 16),
}
CLASSIFIER = {"image_size": 8, "in_channels": 1, "model_channels": 32, "out_channels": 10,
              "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
              "num_head_channels": 32, "pool": "attention"}
ADM128 = {"image_size": 128, "in_channels": 3, "model_channels": 256, "channel_mult": (1, 1, 2, 3, 4),
          "num_res_blocks": 2, "attention_resolutions": (32, 16, 8), "num_heads": 4, "num_classes": 1000}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}  # dense


# ------------------------------------------------------------------------------ the reference
def import_reference(path: str):
    root = Path(path).expanduser().resolve()
    if not (root / "guided_diffusion" / "unet.py").is_file():
        sys.exit(f"--reference {path}: no guided_diffusion/unet.py there (expected a checkout of "
                 "openai/guided-diffusion)")
    sys.path.insert(0, str(root))
    os.environ.setdefault("OPENAI_LOGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "gd-bench-logs"))
    from guided_diffusion import gaussian_diffusion, respace, unet  # torch + numpy only
    from guided_diffusion import nn as gnn
    from guided_diffusion.fp16_util import MixedPrecisionTrainer

    return {"unet": unet, "gd": gaussian_diffusion, "respace": respace, "nn": gnn, "MPT": MixedPrecisionTrainer}


def ref_unet(ref, kw: dict):
    ds = tuple(kw["image_size"] // r for r in kw["attention_resolutions"])
    return ref["unet"].UNetModel(
        image_size=kw["image_size"], in_channels=kw["in_channels"], model_channels=kw["model_channels"],
        out_channels=2 * kw["in_channels"], num_res_blocks=kw["num_res_blocks"], attention_resolutions=ds,
        channel_mult=kw["channel_mult"], num_classes=kw.get("num_classes"), num_heads=kw.get("num_heads", 1),
        num_head_channels=kw.get("num_head_channels", -1), use_scale_shift_norm=True, resblock_updown=True)


def ref_classifier(ref, kw: dict):
    ds = tuple(kw["image_size"] // r for r in kw["attention_resolutions"])
    return ref["unet"].EncoderUNetModel(
        image_size=kw["image_size"], in_channels=kw["in_channels"], model_channels=kw["model_channels"],
        out_channels=kw["out_channels"], num_res_blocks=kw["num_res_blocks"], attention_resolutions=ds,
        channel_mult=kw["channel_mult"], num_head_channels=kw["num_head_channels"],
        use_scale_shift_norm=True, resblock_updown=True, pool=kw["pool"])


def ref_diffusion(ref, respacing: str = ""):
    gd = ref["gd"]
    betas = gd.get_named_beta_schedule("cosine", 1000)
    steps = ref["respace"].space_timesteps(1000, respacing or [1000])
    return ref["respace"].SpacedDiffusion(
        use_timesteps=steps, betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)


# ----------------------------------------------------------------------------------- helpers
def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Small random weights everywhere (the zero-initialised layers too), so outputs are not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleave(variants: dict[str, Callable[[], object]], rounds: int, warmup: int, device) -> dict[str, float]:
    """Median seconds per call of each variant, rounds interleaved (first `warmup` rounds dropped)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            dt = timed(fn, device)
            if r >= warmup:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def machine_speed(device: torch.device) -> float:
    """GFLOP/s of a float32 1024^3 matmul right now: a yardstick printed at the start and the end, since
    a shared machine's speed drifts (neighbours are not always visible in the load average). Ratios
    within one run stay comparable; absolute times only at similar yardsticks."""
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    torch.mm(a, b)
    sync(device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        torch.mm(a, b)
        n += 1
    sync(device)
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9


def report(figure: str, med: dict[str, float], per_call: int, unit: str, baseline: str | None, out: dict) -> None:
    out.setdefault(figure, {})
    for name, sec in med.items():
        rate = per_call / sec
        ratio = f"  {med[baseline] / sec:5.2f}x {baseline}" if baseline and baseline in med else ""
        print(f"{figure:<26} {name:<28} {sec * 1000:9.1f} ms  {rate:9.1f} {unit}{ratio}", flush=True)
        out[figure][name] = {"seconds": sec, unit: rate, **({"ratio": med[baseline] / sec} if ratio else {})}


# ------------------------------------------------------------------------------------- train
def gdm_train_step(model, batch, device, precision: str, compile_mode: str, fused: bool = True) -> Callable[[], None]:
    """The loop body of gdm.train.diffusion for one (non-micro-batched) step (fused: train.fused_optimizer)."""
    x0, t, noise, y = batch
    schedule = build_schedule("cosine", 1000)
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused, key="train.fused_optimizer")
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prec = Precision(precision, device)
    weights = torch.ones(len(x0), device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def losses(xb, tb, nb, yb):
        return training_losses(schedule, lambda xt, tt: model(xt, tt, yb), xb, tb, noise=nb,
                               loss_type="hybrid", learn_sigma=True)

    losses = compile_fn(losses, compile_mode, device, key="train.compile")

    def step():
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            terms = losses(x0, t, noise, y)
            loss = (terms["loss"].float() * weights).sum() / len(x0)
        prec.backward(loss)
        _ = terms["loss"].detach().float().cpu(), float(terms["mse"].detach().float().sum())
        prec.step(opt, params, None)
        ema_update(ema, model, 0.999)

    return step


def ref_train_step(ref, model, batch, use_fp16: bool = False) -> Callable[[], None]:
    """TrainLoop.run_step of the reference without its data loader and logger dumps."""
    x0, t, noise, y = batch
    diffusion = ref_diffusion(ref)
    mpt = ref["MPT"](model=model, use_fp16=use_fp16)
    opt = torch.optim.AdamW(mpt.master_params, lr=1e-4, weight_decay=0.0)
    ema = [copy.deepcopy(p).detach() for p in mpt.master_params]
    weights = torch.ones(len(x0), device=x0.device)

    def step():
        mpt.zero_grad()
        losses = diffusion.training_losses(model, x0, t, model_kwargs={"y": y}, noise=noise)
        mpt.backward((losses["loss"] * weights).mean())
        if mpt.optimize(opt):
            ref["nn"].update_ema(ema, mpt.master_params, rate=0.999)

    return step


def train_inputs(kw: dict, batch_size: int, device) -> tuple[torch.nn.Module, tuple]:
    """A config's seeded UNet and one seeded training batch (x_0, t, noise, y), the same for every variant."""
    torch.manual_seed(0)
    base = randomize(UNet(**kw), 0).to(device)
    g = torch.Generator().manual_seed(1)
    shape = (batch_size, kw["in_channels"], kw["image_size"], kw["image_size"])
    batch = (torch.rand(shape, generator=g).mul(2).sub(1).to(device),
             create_timestep_sampler("uniform", 1000).sample(batch_size, "cpu", generator=g)[0].to(device),
             torch.randn(shape, generator=g).to(device), torch.randint(0, 10, (batch_size,), generator=g).to(device))
    return base, batch


def bench_train(args, ref, device, out) -> None:
    for name in args.train_configs.split(","):
        kw, batch_size = TRAIN_CONFIGS[name]
        batch_size = args.train_batch or batch_size
        base, batch = train_inputs(kw, batch_size, device)
        variants: dict[str, Callable[[], None]] = {}
        if ref is not None:
            rm = ref_unet(ref, kw).to(device)
            rm.load_state_dict(base.state_dict())
            check_same(name, base, rm, batch)
            variants["ref-fp32"] = ref_train_step(ref, rm, batch)
            if device.type == "cuda":
                rm16 = ref_unet(ref, kw).to(device)
                rm16.load_state_dict(base.state_dict())
                variants["ref-fp16"] = ref_train_step(ref, rm16, batch, use_fp16=True)
        variants["gdm-fp32-unfused"] = gdm_train_step(copy.deepcopy(base), batch, device, "fp32", "none", fused=False)
        for prec in ("fp32", "bf16"):
            for mode in ("none", args.compile) if args.compile != "none" else ("none",):
                label = f"gdm-{prec}" + ("" if mode == "none" else f"-compile[{mode}]")
                variants[label] = gdm_train_step(copy.deepcopy(base), batch, device, prec, mode)
        for fn in variants.values():  # compile + first-call costs outside the timed rounds
            fn()
        med = interleave(variants, args.rounds, args.warmup, device)
        report(f"train[{name} b{batch_size}]", med, batch_size, "img/s",
               "ref-fp32" if ref is not None else "gdm-fp32", out)
        bf16 = med["gdm-fp32"] / med["gdm-bf16"]  # the rule: no default where bf16 is the slower
        print(f"# {name}: bf16 autocast is {bf16:.2f}x gdm-fp32 eager here: "
              f"{'faster' if bf16 >= 1 else 'SLOWER: keep train.precision fp32 on this machine'}", flush=True)


def check_same(name, gdm_model, ref_model, batch) -> None:
    x0, t, _noise, y = batch
    with torch.no_grad():
        diff = (gdm_model(x0, t, y) - ref_model(x0, t, y)).abs().max().item()
    print(f"# {name}: same weights, max |gdm - reference| UNet output = {diff:.2e}", flush=True)


# ------------------------------------------------------------------------------------ sample
def bench_sample(args, ref, device, out) -> None:
    kw, _ = TRAIN_CONFIGS["digits"]
    torch.manual_seed(0)
    unet = randomize(UNet(**kw), 2).to(device).eval()
    clf = randomize(EncoderUNet(**CLASSIFIER), 3).to(device).eval()
    n = args.sample_batch
    y = (torch.arange(n) % 10).to(device)
    shape = (n, 1, 8, 8)
    variants: dict[str, Callable[[], object]] = {}
    if ref is not None:
        import torch.nn.functional as F

        rm, rc = ref_unet(ref, kw).to(device).eval(), ref_classifier(ref, CLASSIFIER).to(device).eval()
        rm.load_state_dict(unet.state_dict())
        rc.load_state_dict(clf.state_dict())
        diffusion = ref_diffusion(ref, f"ddim{args.ddim_steps}")

        def cond_fn(x, t, y=None):  # scripts/classifier_sample.py's
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                log_probs = F.log_softmax(rc(x_in, t), dim=-1)
                selected = log_probs[range(len(log_probs)), y.view(-1)]
                return torch.autograd.grad(selected.sum(), x_in)[0] * args.scale

        def ref_run(x_T=None):
            return diffusion.ddim_sample_loop(rm, shape, noise=x_T, clip_denoised=True, model_kwargs={"y": y},
                                              cond_fn=cond_fn if args.scale else None, device=device)

        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(device)
        check_same_samples(unet, clf, x_T, y, args, ref_run(x_T), device)
        variants[f"ref-ddim{args.ddim_steps}"] = ref_run
    # respacing "ddimN" for every row (the timesteps benchmarks/fid_vs_nfe.py scores): fewer DDIM steps
    # and DPM-Solver++(2M) steps, whose FID at each NFE is in the FID-vs-NFE table
    rows = ([("ddim", f"ddim{args.ddim_steps}")] + [("ddim", f"ddim{k}") for k in args.fast_ddim_steps]
            + [("dpmpp2m", f"ddim{k}") for k in args.solver_steps])
    for sampler, respacing in rows:
        for mode in ("none", args.compile) if args.compile != "none" else ("none",):
            sc = SampleConfig(sampler=sampler, respacing=respacing, batch_size=n, compile=mode)
            m, c = compiled_for_sampling(unet, clf if args.scale else None, mode, device)
            schedule = build_schedule("cosine", 1000, respacing)
            label = f"gdm-{sampler}-{respacing.removeprefix('ddim')}" + ("" if mode == "none" else f"-compile[{mode}]")
            variants[label] = (lambda m=m, c=c, sc=sc, schedule=schedule:
                               _sample_batch(m, c, schedule, sc, args.scale, np.arange(n), y, (1, 8, 8), device))
    for fn in variants.values():
        fn()
    med = interleave(variants, args.rounds, args.warmup, device)
    base = f"ref-ddim{args.ddim_steps}" if ref is not None else f"gdm-ddim-{args.ddim_steps}"
    report(f"sample[guided s={args.scale:g} b{n}]", med, n, "img/s", base, out)


def check_same_samples(unet, clf, x_T, y, args, ref_out, device) -> None:
    from gdm.diffusion import classifier_guidance, ddim_sample, sample_generators

    ours = ddim_sample(lambda x, t: unet(x, t, y), build_schedule("cosine", 1000, f"ddim{args.ddim_steps}"),
                       x_T.shape, generators=sample_generators(0, range(len(x_T))), x_T=x_T,
                       cond_fn=classifier_guidance(clf, args.scale, y) if args.scale else None,
                       learn_sigma=True, device=device)
    print(f"# sample: same weights and x_T, max |gdm - reference| DDIM-{args.ddim_steps} sample = "
          f"{(ours - ref_out).abs().max().item():.2e}", flush=True)


# --------------------------------------------------------------------------------------- mfu
def bench_mfu(args, device, out) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    if device.type != "cuda":
        print("# mfu: skipped (CUDA only; on CPU compare against the measured matmul peak in PLATFORM.md)")
        return
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak is None:
        print(f"# mfu: unknown peak for {name}; pass --peak-tflops")
        return
    torch.manual_seed(0)
    model = UNet(**ADM128).to(device)
    n = args.mfu_batch
    g = torch.Generator().manual_seed(1)
    shape = (n, 3, 128, 128)
    batch = (torch.rand(shape, generator=g).mul(2).sub(1).to(device), torch.randint(0, 1000, (n,), generator=g).to(device),
             torch.randn(shape, generator=g).to(device), torch.randint(0, 1000, (n,), generator=g).to(device))
    step = gdm_train_step(model, batch, device, "bf16", args.compile)
    step()
    with FlopCounterMode(display=False) as fc:
        gdm_train_step(copy.deepcopy(model), batch, device, "bf16", "none")()
    flops = fc.get_total_flops()
    med = interleave({"gdm-bf16-adm128": step}, args.rounds, args.warmup, device)
    sec = med["gdm-bf16-adm128"]
    mfu = flops / sec / (peak * 1e12)
    print(f"{'mfu[adm-128 b' + str(n) + ']':<26} gdm-bf16-compile[{args.compile}]  {sec * 1000:9.1f} ms  "
          f"{flops / 1e12:.2f} TFLOP/step  MFU {mfu:.1%} of {peak:g} TFLOP/s ({name})", flush=True)
    out["mfu"] = {"seconds": sec, "tflop_per_step": flops / 1e12, "mfu": mfu, "peak_tflops": peak, "gpu": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--reference", help="path to a checkout of openai/guided-diffusion (omit: gdm rows only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--figures", default="train,sample,mfu")
    ap.add_argument("--train-configs", default="digits,c64,32px")
    ap.add_argument("--train-batch", type=int, default=None, help="override every train config's batch")
    ap.add_argument("--compile", default="default", help="torch.compile mode for the compiled rows ('none': skip them)")
    ap.add_argument("--sample-batch", type=int, default=250)
    ap.add_argument("--scale", type=float, default=2.0, help="classifier guidance scale (0: unguided)")
    ap.add_argument("--ddim-steps", type=int, default=25)
    ap.add_argument("--solver-steps", type=int, nargs="+", default=[10, 15])
    ap.add_argument("--fast-ddim-steps", type=int, nargs="*", default=[10], help="extra DDIM rows with fewer steps")
    ap.add_argument("--mfu-batch", type=int, default=32)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ref = import_reference(args.reference) if args.reference else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if device.type == "cpu":  # bf16 speed on CPU depends on native support (oneDNN emulates it otherwise)
        flags: set[str] = set()
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split()}
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        print(f"# CPU bf16 support: {', '.join(native) if native else 'none found (bf16 is emulated: expect it slower)'}")
    speed = machine_speed(device)
    print(f"# device {device} threads {torch.get_num_threads()} torch {torch.__version__} rounds {args.rounds} "
          f"load(1 min) {load:.2f} fp32 matmul {speed:.0f} GFLOP/s reference {args.reference or '-'}", flush=True)
    out: dict = {"device": str(device), "threads": torch.get_num_threads(), "load_start": load,
                 "matmul_gflops_start": speed}
    figures = args.figures.split(",")
    with contextlib.ExitStack():
        if "train" in figures:
            bench_train(args, ref, device, out)
        if "sample" in figures:
            bench_sample(args, ref, device, out)
        if "mfu" in figures:
            bench_mfu(args, device, out)
    out["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out["matmul_gflops_end"] = machine_speed(device)
    print(f"# load(1 min) at the end {out['load_end']:.2f}, fp32 matmul {out['matmul_gflops_end']:.0f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
