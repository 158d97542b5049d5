"""Train DEQHNet briefly with each ops backend and check that the loss falls.

    python benchmarks/train_check.py --device cuda                 # 200 steps per backend
    python benchmarks/train_check.py --device cpu --tiny --steps 20

The same run as ``deqh train --backbone qhnet --deq`` (the Python API: ``deqh_core.train``),
on ``benchmarks/gpu_inputs/qm9-like.db`` (32 QM9-sized molecules for training, one batch of
32 per step as in QH9, 8 for validation; labels: the core Hamiltonian), with the paper's QH9
settings (model size, DEQ preset 3/3, AdamW at 5e-4) unless overridden, float32, for each
backend. Prints the first and last training losses (mean of the first / last three logged),
the validation H MAE, steps per second, peak memory, and PASS when the loss fell by at least
10%. Exit status 1 if any backend failed to train or its loss did not fall. Needs no PySCF
(``gpu_inputs.use``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import gpu_inputs
import torch
from bench_ops import TINY


def one(backend: str, args) -> bool:
    from deqh_core.config import load_config
    from deqh_core.ops import active_backends
    from deqh_core.train import Trainer

    out = args.out / f"train-{backend}"
    config = load_config(
        "qh9-stable-id",
        None,
        {
            "model": {"backbone": "qhnet", "deq": True, "params": args.params | {"ops": backend}},
            "data": {
                "path": str(gpu_inputs.dataset("qm9-like", args.inputs)),
                "sizes": "32/8/0",
                "batch_size": args.batch,
                "cache": True,
            },
            "optim": {
                "max_steps": args.steps,
                "warmup_steps": max(args.steps // 10, 1),
                **({"lr": args.lr} if args.lr else {}),
            },
            "run": {
                "out": str(out),
                "device": args.device,
                "dtype": "float32",
                "val_every": args.steps,
                "log_every": max(args.steps // 20, 1),
                "progress": False,
                "tensorboard": False,
                "max_minutes": args.minutes,
            },
        },
    )
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer = Trainer(config)
    built = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - built
    with (out / "metrics.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["split"] == "train"]
    first, last = sum(losses[:3]) / len(losses[:3]), sum(losses[-3:]) / len(losses[-3:])
    passed = last < 0.9 * first
    memory = (
        f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"{backend}: {result.step} steps in {seconds:.1f} s ({result.step / seconds:.2f} steps/s; "
        f"setup {built - start:.1f} s{memory}); kernels {active_backends(trainer.model)}\n"
        f"  loss first {first:.4g} -> last {last:.4g}; val H MAE {result.last['mae_all']:.4g} Ha"
        f", DEQ evaluations {result.last.get('deq_nfe', float('nan')):.1f}"
        f"  {'PASS' if passed else 'FAIL: the loss did not fall by 10%'}",
        flush=True,
    )
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every installed")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="default: the QH9 preset's")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap per backend")
    parser.add_argument("--params", type=json.loads, default={}, help="QHNet config overrides")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny model, batch 4")
    parser.add_argument("--inputs", type=Path, default=gpu_inputs.DEFAULT)
    parser.add_argument(
        "--out", type=Path, default=None, help="run folders (default: a new temporary folder)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.params, args.batch = TINY | args.params, min(args.batch, 4)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="deqh-train-check-"))
    gpu_inputs.use(args.inputs)
    from deqh_core.ops import BACKENDS, cueq_available

    backends = args.backends or [b for b in BACKENDS if b != "cueq" or cueq_available()]
    print(f"DEQHNet, {args.steps} steps, batch {args.batch}, overrides {args.params or 'none'}")
    ok = True
    for backend in backends:
        try:
            ok &= one(backend, args)
        except Exception:  # report and go on with the next backend
            traceback.print_exc()
            print(f"{backend}: FAILED", flush=True)
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
