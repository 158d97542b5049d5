"""SPHNet's sparsity at deqh's CPU size: validation H MAE after a fixed number of qh9-small
steps for several gate sparsities (and QHNet beside), several seeds, ``--jobs`` runs at a time
(default 2) on one thread each. Resumable: a finished run (its out folder has last.pt at the
final step) is read, not rerun.

    python benchmarks/sphnet_sparsity.py --steps 1500 --seeds 2 --out runs/sphnet-sparsity

Needs the plugin: pip install ./plugins/deqh-sphnet.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run(out: Path, backbone: str, sparsity: float | None, seed: int, steps: int) -> Path:
    folder = out / f"{backbone}-{sparsity}-seed{seed}"
    if (folder / "metrics.csv").exists() and _last_step(folder) >= steps:
        return folder
    cmd = [
        sys.executable, "-m", "deqh_core", "train", "--backbone", backbone,
        "--preset", "qh9-small", "--steps", str(steps), "--out", str(folder),
        "--set", f"run.seed={seed}", "--set", "run.progress=false",
        "--set", f"run.val_every={max(steps // 6, 1)}",
    ]  # fmt: skip
    if sparsity is not None:
        cmd += ["--set", f"model.params.sparsity={sparsity}"]
    if (folder / "last.pt").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return folder


def _rows(folder: Path) -> list[dict]:
    with (folder / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _last_step(folder: Path) -> int:
    return max((int(r["step"]) for r in _rows(folder) if r["split"] == "val"), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.7, 0.5, 0.3, 0.0])
    parser.add_argument("--out", type=Path, default=Path("runs/sphnet-sparsity"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    args = parser.parse_args()
    jobs = [("qhnet", None)] + [("sphnet", s) for s in args.sparsity]
    tasks = [(b, s, seed) for b, s in jobs for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda t: run(args.out, *t, args.steps), tasks))
    print(
        f"qh9-small, {args.steps} steps, {args.seeds} seeds, one thread per run, "
        f"{args.jobs} at a time"
    )
    print("| backbone | sparsity | val H MAE, µHa (mean ± s.e.) | s/step (median of seeds) |")
    print("|---|---|---|---|")
    for b, s in jobs:
        maes, times = [], []
        for (b2, s2, _), folder in zip(tasks, folders):
            if (b2, s2) != (b, s):
                continue
            rows = [r for r in _rows(folder) if r["split"] == "val"]
            maes.append(1e6 * float(rows[-1]["mae_all"]))
            times.append(float(rows[-1]["time"]) / int(rows[-1]["step"]))
        se = statistics.stdev(maes) / len(maes) ** 0.5 if len(maes) > 1 else float("nan")
        label = "-" if s is None else f"{s:g}"
        mean, step = statistics.mean(maes), statistics.median(times)
        print(f"| {b} | {label} | {mean:.0f} ± {se:.0f} | {step:.3f} |")


if __name__ == "__main__":
    main()
