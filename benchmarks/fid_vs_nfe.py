"""FID against the number of network evaluations (NFE), DDIM vs DPM-Solver++(2M), guided and not.

    python benchmarks/fid_vs_nfe.py [--params params.yaml] [--set key=value ...]
        [--steps 5 8 10 15 25 50] [--samplers ddim dpmpp2m] [--settings cond:0.0 cond:2.0 cond:8.0 uncond:2.0]
        [--out reports/fid_vs_nfe]

e.g. against the models of a finished demo elsewhere (paths as --set overrides):
    python benchmarks/fid_vs_nfe.py --params ../other/params.yaml --set pipeline.runs_dir=../other/runs \
        --set data.out_dir=../other/data/prepared --set eval.cache_dir=/tmp/fid-cache --set tracking.enabled=false

Uses the trained models of the pipeline (`gdm train --variant cond|uncond`, `gdm train-classifier`,
`gdm train-evaluator`, under pipeline.runs_dir) and the same code path as `gdm sample` (respacing
"ddimN" for both samplers: the same timesteps, only the solver differs; the same per-sample seeds,
so sample i starts from the same x_T everywhere). Scores with `eval.features` (the evaluator's
features on digits) against `eval.reference`, sample.num_samples samples per cell. One network call
per step for both samplers, so NFE = steps (guided: plus one classifier gradient per step).
Prints a markdown table per setting and writes <out>.md and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gdm.config import load_config
from gdm.evaluation import evaluate_file
from gdm.sampling import sample
from gdm.stages import classifier_path, dataset_dir, evaluator_path, unet_path, variant_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], help="override a key, e.g. sample.num_samples=1000")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 8, 10, 15, 25, 50])
    ap.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp2m"])
    ap.add_argument("--settings", nargs="+", default=["cond:0.0", "cond:2.0", "cond:8.0", "uncond:2.0"],
                    help="variant:scale pairs")
    ap.add_argument("--out", default="reports/fid_vs_nfe")
    args = ap.parse_args()
    cfg = load_config(args.params, args.set)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            variant, scale = setting.split(":")
            scale = float(scale)
            vcfg = variant_config(cfg, variant)
            for sampler in args.samplers:
                for steps in args.steps:
                    sc = vcfg.sample.model_copy(update={"sampler": sampler, "respacing": f"ddim{steps}"})
                    t0 = time.perf_counter()
                    run = sample(unet_path(vcfg, variant), Path(tmp) / f"{variant}-{scale:g}-{sampler}-{steps}", sc,
                                 scale, classifier_path=classifier_path(vcfg) if scale > 0 else None)
                    seconds = time.perf_counter() - t0
                    m = evaluate_file(vcfg, run.npz, dataset_dir(vcfg), evaluator=evaluator_path(vcfg))
                    row = {"variant": variant, "scale": scale, "sampler": sampler, "nfe": steps,
                           "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
                           "accuracy": m.get("accuracy"), "num_samples": sc.num_samples,
                           "images_per_s": sc.num_samples / seconds}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    md = table(results, args.samplers, args.steps)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))


def table(results: list[dict], samplers: list[str], steps: list[int]) -> str:
    lines = [f"FID ({results[0]['num_samples'] if results else 0} samples, evaluator features) by NFE",
             "", "| variant | scale | sampler | " + " | ".join(f"NFE {s}" for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    keys = sorted({(r["variant"], r["scale"]) for r in results}, key=lambda k: (k[0], k[1]))
    for variant, scale in keys:
        for sampler in samplers:
            cells = []
            for s in steps:
                hit = [r for r in results if (r["variant"], r["scale"], r["sampler"], r["nfe"]) == (variant, scale, sampler, s)]
                cells.append(f"{hit[0]['fid']:.2f}" if hit else "")
            lines.append(f"| {variant} | {scale:g} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
