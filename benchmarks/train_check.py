"""Train DEQHNet briefly with each ops backend and check that the loss falls.

    python benchmarks/train_check.py --device cuda                 # 200 steps per backend
    python benchmarks/train_check.py --device cpu --tiny --steps 30 --lr 2e-2

What ``deqh train --backbone qhnet --deq --preset qh9-stable-id`` trains, through the Python
API: the same config (paper model size, DEQ preset 3/3, AdamW at 5e-4 with warm-up and decay,
gradient clipping), model (``HamiltonianModel``) and loss (``training_loss``), float32, on
``benchmarks/gpu_inputs/qm9-like.db``: 32 QM9-sized molecules for training, one batch of 32 per
step as in QH9, 8 for validation; labels: the core Hamiltonian. Not the training engine itself:
it records the labels' PySCF recipe in its checkpoints, and this runs where PySCF is missing
(``gpu_inputs.use``) and writes nothing.

Per backend it prints the first and last training loss (means of the first and last three
steps), the validation H MAE, the DEQ evaluations, steps per second and peak memory, and PASS
when the loss fell by at least 10%. Exit status 1 if a backend failed to train or its loss did
not fall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import gpu_inputs
import torch
from bench_ops import TINY
from torch_geometric.loader import DataLoader


def one(backend: str, args) -> bool:
    from deqh_core.data.dataset import HamiltonianDataset
    from deqh_core.ops import active_backends
    from deqh_core.training.config import load_config
    from deqh_core.training.metrics import MAEAccumulator, training_loss
    from deqh_core.training.model import HamiltonianModel
    from deqh_core.training.trainer import _lr_lambda, to_device

    config = load_config(
        "qh9-stable-id",
        None,
        {
            "model": {"backbone": "qhnet", "deq": True, "params": args.params | {"ops": backend}},
            "optim": {
                "max_steps": args.steps,
                "warmup_steps": max(args.steps // 10, 1),
                **({"lr": args.lr} if args.lr else {}),
            },
        },
    )
    device, dtype = torch.device(args.device), torch.float32
    path = gpu_inputs.dataset("qm9-like", args.inputs)
    dataset = HamiltonianDataset(path, dtype=dtype)
    train = [dataset[i] for i in range(32)]
    val = [dataset[i] for i in range(32, min(40, len(dataset)))]
    torch.manual_seed(0)
    model = HamiltonianModel(config.model, dataset.layout, config.deq).to(device, dtype)
    o = config.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: _lr_lambda(config, k))
    loader = DataLoader(
        train, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, step, start = [], 0, time.perf_counter()
    deadline = start + 60 * args.minutes if args.minutes else None
    model.train()
    while step < args.steps and not (deadline and time.perf_counter() > deadline):
        for batch in loader:
            batch = to_device(batch, device, dtype)
            pred, diagnostics = model(batch)
            loss = training_loss(pred, diagnostics, batch, config.deq.residual_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            step += 1
            if step >= args.steps or (deadline and time.perf_counter() > deadline):
                break
    losses = torch.stack(losses).tolist()  # one synchronisation, at the end
    seconds = time.perf_counter() - start
    model.eval()
    mae, nfe = MAEAccumulator(), []
    with torch.no_grad():
        for batch in DataLoader(val, batch_size=args.batch):
            batch = to_device(batch, device, dtype)
            pred, diagnostics = model(batch)
            mae.update(pred, batch)
            nfe.append(diagnostics.nfe)
    first, last = sum(losses[:3]) / len(losses[:3]), sum(losses[-3:]) / len(losses[-3:])
    passed = last < 0.9 * first
    memory = (
        f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"{backend}: {step} steps in {seconds:.1f} s ({step / seconds:.2f} steps/s{memory}); "
        f"kernels {active_backends(model)}\n"
        f"  loss first {first:.4g} -> last {last:.4g}; val H MAE {mae.result()['mae_all']:.4g} "
        f"Ha, DEQ evaluations {sum(nfe) / len(nfe):.1f}"
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
    args = parser.parse_args()
    if args.tiny:
        args.params, args.batch = TINY | args.params, min(args.batch, 4)
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
