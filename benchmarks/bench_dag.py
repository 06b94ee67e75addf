"""Wall time of the pipeline flow run sequentially vs as a concurrent DAG (same session, same params).

    python benchmarks/bench_dag.py                       # today's `make demo` stage set (params.yaml)
    python benchmarks/bench_dag.py --fraction 0.1        # every step count x0.1 (a quick look)
    python benchmarks/bench_dag.py --modes seq,seq1,threads,dask
    python benchmarks/bench_dag.py --set pipeline.samplers=[ddim]   # without the solver rows

Each mode runs `python -m flows.pipeline` in its own fresh folder (own data, runs, MLflow store and
Prefect cache, so nothing is reused), one mode after the other. Printed: wall time per mode, the speed-up
against `seq`, whether every summary metric equals the sequential run's (`seq` uses all cores per stage
as the old sequential demo did; `seq1` one thread per stage like the concurrent modes: float results can
differ in the last digits with the thread count), and the load average before
and after each run (the machine is shared: compare ratios inside one run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gdm.config import parse_override, set_dotted

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "seq": ["pipeline.max_parallel=1", "pipeline.stage_threads=" + str(os.cpu_count() or 1)],  # the old demo
    "seq1": ["pipeline.max_parallel=1", "pipeline.stage_threads=1"],  # sequential, concurrent's thread count
    "threads": [],
    "dask": ["pipeline.task_runner=dask"],
}
STEP_KEYS = (("train", "steps"), ("classifier_train", "steps"), ("evaluator", "steps"))


def make_project(dst: Path, fraction: float, overrides: list[str] = ()) -> None:
    dst.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for item in overrides:  # key.path=YAML value, e.g. pipeline.samplers=[ddim]: the CLI's --set rules
        set_dotted(params, *parse_override(item), origin=f"--set {item}")
    if fraction != 1.0:
        for section, key in STEP_KEYS:
            params[section][key] = max(1, int(params[section][key] * fraction))
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(mode: str, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PREFECT_HOME": str(root / ".prefect"), "PREFECT_LOCAL_STORAGE_PATH": str(root / ".prefect/storage")}
    env.pop("PREFECT_API_URL", None)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", *(f"--set={o}" for o in MODES[mode])],
                          cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{mode}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = json.loads((root / "reports/summary.json").read_text())
    return {"wall": wall, "load_before": load0, "load_after": os.getloadavg()[0],
            "metrics": {f"{r['variant']}/{r['sampler']}/{r.get('guidance', 'classifier')}/{r['scale']}": {k: r[k] for k in
                                                                           ("fid", "sfid", "is", "precision", "recall",
                                                                            "accuracy")} for r in rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="scale every training step count")
    ap.add_argument("--modes", default="seq,threads", help="comma list of: " + ", ".join(MODES))
    ap.add_argument("--keep", action="store_true", help="keep the project folders")
    ap.add_argument("--set", action="append", default=[], help="override a params.yaml key for every mode, "
                    "e.g. --set pipeline.samplers=[ddim] (the stage set of issue 11)")
    ap.add_argument("--json", help="also write every mode's wall time, load and metrics here")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gdm-bench-dag-"))
    print(f"{os.cpu_count()} CPU cores; load average now {os.getloadavg()[0]:.1f}; folders under {base}")
    results = {}
    for mode in args.modes.split(","):
        root = base / mode
        make_project(root, args.fraction, args.set)
        results[mode] = r = run(mode, root)
        print(f"{mode:8s} {r['wall']:8.1f} s   load {r['load_before']:.1f} -> {r['load_after']:.1f}", flush=True)
    for ref_mode in ("seq", "seq1"):  # speed-up against each sequential run; metrics: seq1 is the like-for-like one
        ref = results.get(ref_mode)
        for mode, r in results.items():
            if ref is None or mode == ref_mode:
                continue
            same = r["metrics"] == ref["metrics"]
            worst = max(abs(a - b) / max(abs(b), 1e-12) for k in ref["metrics"] for a, b in
                        zip(r["metrics"][k].values(), ref["metrics"][k].values()) if a is not None and b is not None)
            print(f"{mode:8s} speed-up x{ref['wall'] / r['wall']:.2f} vs {ref_mode}; metrics identical: {same}"
                  f" (largest relative difference {worst:.2e})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
