"""ADM attention: q, k, v as transposed views vs contiguous (gdm.nn.attention.split_qkv), in one run.

SDPA's fused kernels need the head channels at stride 1; the transposed [N, H, ch, L] -> [N, H, L, ch]
views of the reference's layout send it to the math path (the L x L weights of every head in
memory). This prints, per shape, the median time of `qkv_attention` with the views (baseline) and
with gdm's contiguous split, without gradients (sampling) and forward + backward (training), with
variants interleaved round by round, the ratio, the largest output difference, and which SDPA
backend each layout gets. (gdm's default keeps the views on a CPU below
gdm.nn.attention.CPU_CONTIGUOUS_MIN_LENGTH positions; this compares both layouts at every L.)

    .venv/bin/python benchmarks/bench_attention.py [--threads 2] [--rounds 9] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_vs_reference import interleave

from gdm.nn.attention import split_qkv

SHAPES = [  # (batch, channels, L = H*W, heads): ADM layers at digits, 32x32, ADM-128/256 scale
    (250, 128, 16, 2), (64, 128, 64, 2), (16, 128, 256, 2), (8, 256, 1024, 4),
]
BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def views_split(qkv: torch.Tensor, heads: int):
    """The layout before: transposed views (stride(-1) = L), as the reference's reshape gives them."""
    return split_qkv(qkv, heads, "legacy", contiguous=False)


def attention(qkv: torch.Tensor, heads: int, split) -> torch.Tensor:
    n, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = split(qkv, heads)
    s = ch**-0.25
    a = F.scaled_dot_product_attention(q * s, k * s, v, scale=1.0)
    return a.transpose(-1, -2).reshape(n, heads * ch, length)


def contiguous_split(qkv: torch.Tensor, heads: int):
    return split_qkv(qkv, heads, "legacy", contiguous=True)


def bench_shape(n: int, c: int, length: int, heads: int, rounds: int, device: torch.device) -> str:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(n, 3 * c, length, generator=g).to(device)
    gy = torch.randn(n, c, length, generator=g).to(device)
    qg = qkv.clone().requires_grad_(True)
    splits = {"views": views_split, "contiguous": contiguous_split}
    with torch.no_grad():
        diff = (attention(qkv, heads, views_split) - attention(qkv, heads, contiguous_split)).abs().max()
    backend = {k: BACKENDS.get(int(torch._fused_sdp_choice(*f(qkv, heads))), "?") for k, f in splits.items()}
    fns = {}
    for k, f in splits.items():
        fns[f"{k} no-grad"] = lambda f=f: torch.no_grad()(attention)(qkv, heads, f)
        fns[f"{k} fwd+bwd"] = lambda f=f: torch.autograd.grad(attention(qg, heads, f), qg, gy)
    med = {key: t * 1000 for key, t in interleave(fns, rounds, 2, device).items()}  # two warm-up rounds
    parts = [f"{mode} {med[f'views {mode}']:.2f} -> {med[f'contiguous {mode}']:.2f} ms "
             f"({med[f'views {mode}'] / med[f'contiguous {mode}']:.2f}x)" for mode in ("no-grad", "fwd+bwd")]
    return (f"attention[N{n} C{c} L{length} H{heads}] {' | '.join(parts)} | "
            f"SDPA backend {backend['views']} -> {backend['contiguous']} | max diff {float(diff):.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (median)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    for n, c, length, heads in SHAPES:
        print(bench_shape(n, c, length, heads, args.rounds, device), flush=True)

if __name__ == "__main__":
    main()
