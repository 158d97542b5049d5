"""Speed of the paper-size QHNet / DEQHNet backbones on a CPU (untrained weights, float32).

    python benchmarks/bench_backbones.py [--threads 2] [--repeat 5] [--variants ...]

For each variant (QHNet predictor; QHNet reading S; DEQHNet = reads H and S, DEQ-wrapped with
the QH9 preset of 3/3 iterations) and each system (water and ethanol from the bundled dataset,
n-hexane C6H14 with 20 atoms, a QH9-sized molecule) it reports

* inference time per molecule (eval mode, no gradient, one molecule per batch);
* training-step time for a batch of 5 molecules: forward, eq.-45 loss, backward and a fused
  AdamW step;

the median over ``--repeat`` runs after a warm-up, the parameter counts, the DEQ iterations used
and the DEQHNet / QHNet ratios, next to the reference implementations' times measured on this
kind of machine. The reference code is not run here.

Timings are only meaningful on an otherwise idle machine: the script prints /proc/loadavg
before and after, and a 2-thread run on a 2-core machine that is busy elsewhere can be many
times slower (OpenMP threads spin waiting for each other).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from deqh_backbones.qhnet import QHNetConfig
from deqh_core.ao.basis import AOLayout, mole
from deqh_core.data.dataset import HamiltonianDataset, molecule_data
from deqh_core.data.store import MoleculeRecord
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.backbone import ReducedSolver
from deqh_core.solvers.deq import DEQConfig, DEQHamiltonianSolver
from deqh_core.training.metrics import hamiltonian_loss

# Reference implementations on this kind of machine (seconds; issue "Backbones"): QHNet 20.4M
# parameters, DEQHNet 26.3M with 5 DEQ iterations.
REFERENCE = {
    "QHNet": {"water": 0.10, "ethanol": 0.23, "train water": 0.51, "train ethanol": 2.27},
    "DEQHNet": {"water": 0.87, "ethanol": 1.65, "train water": 2.23, "train ethanol": 8.6},
}
VARIANTS = {  # name: (reads H, reads S)
    "QHNet": (False, False),
    "QHNet+S": (False, True),
    "DEQHNet": (True, True),
}


def hexane() -> tuple[np.ndarray, np.ndarray]:
    """n-hexane C6H14 (20 atoms), all-anti zig-zag chain: C-C 1.52 Å, C-H 1.09 Å."""
    z, pos = [], []
    carbons = [np.array([1.2557 * i, 0.4261 * (-1) ** i, 0.0]) for i in range(6)]
    for i, c in enumerate(carbons):
        z.append(6)
        pos.append(c)
        out = np.array([0.0, (-1.0) ** i, 0.0])
        for side in (1.0, -1.0):  # two hydrogens off the chain plane
            z.append(1)
            pos.append(c + 1.09 * (0.5774 * out + side * 0.8165 * np.array([0.0, 0.0, 1.0])))
        if i in (0, 5):  # a third hydrogen on the end carbons, along the chain
            axis = c - carbons[1 if i == 0 else 4]
            z.append(1)
            pos.append(c + 1.09 * axis / np.linalg.norm(axis))
    return np.array(z), np.array(pos)


def systems(layout: AOLayout, dtype: torch.dtype) -> dict[str, list]:
    """Five molecules per system (the first is used for inference)."""
    bundled = HamiltonianDataset(layout=layout, dtype=dtype)
    by_size: dict[int, list[int]] = {}
    for mol_id, record in zip(bundled.ids, bundled.records()):
        by_size.setdefault(len(record.atomic_numbers), []).append(mol_id)
    out = {}
    for name, n_atoms in (("water", 3), ("ethanol", 9)):
        subset = HamiltonianDataset(layout=layout, dtype=dtype, ids=by_size[n_atoms][:5])
        out[name] = [subset[i] for i in range(5)]
    z, pos = hexane()
    rng = np.random.default_rng(0)
    items = []
    for k in range(5):  # thermal-like copies: 0.02 Å noise
        p = pos + rng.normal(scale=0.02, size=pos.shape) * (k > 0)
        mol = mole(z, p, layout.basis)
        label = mol.intor("int1e_kin") + mol.intor("int1e_nuc")  # timing only: any matrix
        items.append(
            molecule_data(MoleculeRecord(k, z, p, label, mol.intor("int1e_ovlp")), layout, dtype)
        )
    out["hexane (20 atoms)"] = items
    return out


def build(variant: str, layout: AOLayout, seed: int = 0) -> torch.nn.Module:
    """The paper-size model of a variant, untrained (seeded)."""
    reads_h, reads_s = VARIANTS[variant]
    torch.manual_seed(seed)
    solver = ReducedSolver(get_backbone("qhnet"), QHNetConfig(), layout, reads_h, reads_s)
    return DEQHamiltonianSolver(solver, DEQConfig.preset("qh9")) if reads_h else solver


def run(model, batch):
    """Blocks and DEQ iterations (None for a predictor)."""
    if isinstance(model, DEQHamiltonianSolver):
        blocks, diagnostics = model(batch)
        return blocks, diagnostics.nfe
    return model(batch, None, model.inject(batch)), None


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_variant(
    variant: str, layout: AOLayout, mols: dict[str, list], repeat: int, train: bool
) -> dict[str, float]:
    """Parameter count (millions), inference and training-step times (s), DEQ iterations."""
    model = build(variant, layout)
    row: dict[str, float] = {"params (M)": sum(p.numel() for p in model.parameters()) / 1e6}
    for name, items in mols.items():
        single = Batch.from_data_list(items[:1])
        model.eval()
        with torch.no_grad():
            row[name] = median_time(lambda b=single: run(model, b), repeat)
            _, nfe = run(model, single)
        if nfe is not None:
            row[f"{name} iterations"] = nfe
        if not train:
            continue
        batch = Batch.from_data_list(items)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(b=batch, opt=optimizer):
            blocks, _ = run(model, b)
            loss = hamiltonian_loss(blocks, b)
            opt.zero_grad()
            loss.backward()
            opt.step()

        row[f"train {name}"] = median_time(step, max(3, repeat // 2))
    return row


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--systems", nargs="+", default=None, help="subset of the systems")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    torch.set_default_dtype(dtype)
    layout = AOLayout("def2-svp", [1, 6, 7, 8, 9])
    mols = systems(layout, dtype)
    if args.systems:
        mols = {k: v for k, v in mols.items() if any(k.startswith(s) for s in args.systems)}
    print(f"torch {torch.__version__}, {args.threads} threads, float32; loadavg {loadavg()}")

    results: dict[str, dict[str, float]] = {}
    for variant in args.variants:
        results[variant] = bench_variant(variant, layout, mols, args.repeat, not args.no_train)
        print(f"  {variant}: done; loadavg {loadavg()}", flush=True)

    keys = list(dict.fromkeys(k for row in results.values() for k in row))
    width = max(len(k) for k in keys) + 2
    print()
    print("".ljust(width) + "".join(f"{v:>12s}" for v in results))
    for key in keys:
        cells = []
        for variant in results:
            value = results[variant].get(key)
            if value is None:
                cells.append(f"{'-':>12s}")
            elif "iterations" in key:
                cells.append(f"{value:>12.0f}")
            elif "params" in key:
                cells.append(f"{value:>12.2f}")
            else:
                cells.append(f"{value:>11.3f}s")
        print(key.ljust(width) + "".join(cells))

    if "QHNet" in results and "DEQHNet" in results:
        print("\nDEQHNet / QHNet:")
        for key, value in results["DEQHNet"].items():
            if "iterations" in key or "params" in key or key not in results["QHNet"]:
                continue
            print(f"  {key:<{width}} {value / results['QHNet'][key]:.2f}x")
    print("\nAgainst the reference implementations (speed-up = reference time / ours):")
    for variant, reference in REFERENCE.items():
        if variant not in results:
            continue
        for key, ref in reference.items():
            ours = results[variant].get(key)
            if ours is not None:
                cells = f"ref {ref:6.2f}s  ours {ours:6.3f}s  {ref / ours:5.1f}x"
                print(f"  {variant:<8s} {key:<15s} {cells}")
    print(f"\nloadavg at the end {loadavg()}")


if __name__ == "__main__":
    main()
