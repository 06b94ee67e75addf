"""Data-path figures at scale: prepare throughput, peak memory, reader throughput vs the trainer.

For each size it generates (once, cached under --workdir) a synthetic 64x64 RGB imagefolder with 10
class subfolders, then measures, each in a fresh subprocess so peak RSS is that job's alone:

- `gdm prepare` images/s with each --workers count, and its peak RSS (main process, and the
  largest worker process);
- 50 (--batches) training-reader batches (StepReader, --batch rows): peak RSS, and images/s with
  0, 1, 2 DataLoader workers (--reader-workers);

and once, the images/s of one training step (forward + hybrid loss + backward + AdamW) of the
adm-64-sized UNet (296M parameters) at the same batch, so the table shows whether the reader keeps
a trainer fed. The goal is that peak RSS does not grow with the dataset: compare the columns.

    .venv/bin/python benchmarks/bench_data.py [--sizes 20000 100000] [--workers 1 2]
        [--reader-workers 0 1 2] [--batch 8] [--batches 50] [--device cpu|cuda] [--train-steps 2]
        [--workdir /tmp/gdm-bench-data] [--parts prepare reader train]

On a GPU host pass --device cuda: the trainer column then shows what the reader has to keep up with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def make_imagefolder(root: Path, n: int, seed: int = 0) -> Path:
    """n 64x64 RGB PNGs (smooth random fields + noise, so they compress like photos, not like noise)."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return root
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for i in range(n):
        c = i % CLASSES
        d = root / f"class{c:02d}"
        if i < CLASSES:
            d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((64, 64), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (64, 64, 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{i:07d}.png", compress_level=1)
        if (i + 1) % 10000 == 0:
            print(f"  generated {i + 1}/{n} images ({(i + 1) / (time.perf_counter() - t0):.0f}/s)", flush=True)
    done.write_text(str(n))
    return root


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest waited-for child) peak resident set size in MB (Linux: ru_maxrss is KB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


# ----------------------------------------------------------------------------------- children
def child_prepare(folder: str, out: str, workers: int) -> dict:
    from gdm.config import DataConfig
    from gdm.data.prepare import prepare_dataset
    from gdm.data.sources import open_source

    base = rss_now_mb()  # after the imports: what any gdm process costs
    cfg = DataConfig(source="imagefolder", path=folder, out_dir=out, name="bench", resolution=64, channels=3,
                     num_workers=workers, val_fraction=0.02)
    t0 = time.perf_counter()
    src = open_source(cfg.source, cfg.path, cfg.labels)
    listed = time.perf_counter() - t0
    prepare_dataset(cfg, source=src)
    dt = time.perf_counter() - t0
    main, child = peak_rss_mb()
    return {"images": src.count, "seconds": dt, "list_seconds": listed, "images_per_s": src.count / dt,
            "rss_mb": main, "worker_rss_mb": child, "base_mb": base}


def child_reader(dataset: str, batch: int, batches: int, workers: int) -> dict:
    from gdm.data.reader import StepReader

    base = rss_now_mb()
    r = StepReader(dataset, "train", batch_size=batch, seed=0, random_flip=True, num_workers=workers)
    it = r.batches(0, batches + 5)
    for _ in range(5):  # warm-up: worker start, first row groups
        next(it)
    t0 = time.perf_counter()
    n = sum(len(y) for _, (_, y) in it)
    dt = time.perf_counter() - t0
    main, child = peak_rss_mb()
    return {"images_per_s": n / dt, "rss_mb": main, "worker_rss_mb": child, "rows": len(r), "base_mb": base}


def child_train(batch: int, steps: int, device: str) -> dict:
    import torch

    from gdm.diffusion import build_schedule, training_losses
    from gdm.nn import build_preset

    torch.manual_seed(0)
    model = build_preset("adm-64", device=device)
    model.train()
    schedule = build_schedule("cosine", 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 3, 64, 64, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        loss = training_losses(schedule, lambda xt, tt: model(xt, tt, y), x0, t, noise=torch.randn_like(x0),
                               loss_type="hybrid",
                               learn_sigma=True)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"images_per_s": batch * steps / dt, "seconds_per_step": dt / steps,
            "parameters": sum(p.numel() for p in model.parameters())}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                          os.environ.get("PYTHONPATH", "")])})
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss(r: dict) -> str:
    worker = f" / {r['worker_rss_mb']:.0f}" if r["worker_rss_mb"] else ""
    return f"{r['rss_mb']:.0f} ({r['base_mb']:.0f}){worker}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="prepare processes (data.num_workers)")
    ap.add_argument("--reader-workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=2, help="timed adm-64 training steps (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default="/tmp/gdm-bench-data")
    ap.add_argument("--parts", nargs="+", default=["prepare", "reader", "train"], choices=["prepare", "reader", "train"],
                    help="what to measure (the reader reuses a dataset prepared by an earlier run)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        fn = {"prepare": lambda f, o, w: child_prepare(f, o, int(w)),
              "reader": lambda d, b, n, w: child_reader(d, int(b), int(n), int(w)),
              "train": lambda b, s, dev: child_train(int(b), int(s), dev)}[kind]
        print(json.dumps(fn(*rest)))
        return

    work = Path(a.workdir)
    rows = {}
    for n in a.sizes if {"prepare", "reader"} & set(a.parts) else []:
        print(f"size {n}: generating / checking the imagefolder ...", flush=True)
        folder = make_imagefolder(work / f"folder-{n}", n)
        r = rows[n] = {}
        for w in a.workers if "prepare" in a.parts else []:
            res = run_child("prepare", str(folder), str(work / f"prepared-{n}-w{w}"), str(w))
            r[f"prepare_w{w}"] = res
            print(f"  prepare workers={w}: {res['images_per_s']:.0f} images/s, peak RSS {_rss(res)} MB", flush=True)
        dataset = work / f"prepared-{n}-w{a.workers[0]}" / "bench"
        if "reader" in a.parts and not (dataset / "manifest.json").is_file():
            run_child("prepare", str(folder), str(dataset.parent), str(a.workers[-1]))
        for w in a.reader_workers if "reader" in a.parts else []:
            res = run_child("reader", str(dataset), str(a.batch), str(a.batches), str(w))
            r[f"reader_w{w}"] = res
            print(f"  reader workers={w}: {res['images_per_s']:.0f} images/s, peak RSS {_rss(res)} MB", flush=True)
    train = run_child("train", str(a.batch), str(a.train_steps), a.device) if a.train_steps and "train" in a.parts \
        else None

    sizes = a.sizes
    print(f"\n| figure | {' | '.join(f'{n} images' for n in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for w in a.workers if "prepare" in a.parts else []:
        print(f"| prepare, {w} worker(s): images/s | "
              + " | ".join(f"{rows[n][f'prepare_w{w}']['images_per_s']:.0f}" for n in sizes) + " |")
    for w in a.workers if "prepare" in a.parts else []:
        print(f"| prepare, {w} worker(s): peak RSS main (after imports) / largest worker, MB | "
              + " | ".join(_rss(rows[n][f"prepare_w{w}"]) for n in sizes) + " |")
    for w in a.reader_workers if "reader" in a.parts else []:
        print(f"| reader ({a.batches} batches of {a.batch}), {w} DataLoader worker(s): images/s | "
              + " | ".join(f"{rows[n][f'reader_w{w}']['images_per_s']:.0f}" for n in sizes) + " |")
    for w in a.reader_workers if "reader" in a.parts else []:
        print(f"| reader, {w} worker(s): peak RSS main (after imports) / largest worker, MB | "
              + " | ".join(_rss(rows[n][f"reader_w{w}"]) for n in sizes) + " |")
    if train:
        print(f"| adm-64 UNet ({train['parameters'] / 1e6:.0f}M params) training step at batch {a.batch} on "
              f"{a.device}: images/s | {train['images_per_s']:.2f} ({train['seconds_per_step']:.1f} s/step) |")


if __name__ == "__main__":
    main()
