"""SPHNet against QHNet, in one run: forward (evaluation) and training-step time, CPU.

    python benchmarks/bench_sphnet.py [--size paper|qh9-small] [--molecules 8] [--atoms 18]

``paper``: each backbone's default (paper) configuration -- QHNet's Table 4 model, SPHNet's
QH9 model (order 4, 128 channels, 70 % sparsity, tensor-product paths frozen as after its
schedule) -- on a batch of ``--molecules`` QH9-stable-id **train** molecules of ``--atoms`` atoms
(QH9's mean is 18; geometries from qm9pack, labels not needed: the target is PySCF's core
Hamiltonian of each, as in the conformance kit). ``qh9-small``: the preset's CPU sizes on the same
batch. Predictors (no DEQ), float32, untrained (seeded), an AdamW step in the training step;
median of ``--repeat`` after a warm-up. Time only on an idle machine (loadavg is printed).
Needs the plugin: pip install ./plugins/deqh-sphnet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout, mole
from deqh_core.data.dataset import molecule_data
from deqh_core.data.qm9 import qm9_table, select_ids
from deqh_core.data.store import MoleculeRecord
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.backbone import ReducedSolver
from deqh_core.training.config import load_config
from deqh_core.training.metrics import hamiltonian_loss
from deqh_core.util.device import to_device


def qh9_batch(molecules: int, atoms: int) -> tuple[Batch, AOLayout, list[int]]:
    table = qm9_table()
    ids = select_ids(table.n_atoms, part="train")
    ids = [int(i) for i in ids if table.n_atoms[i] == atoms][:molecules]
    layout = AOLayout("def2-svp", [1, 6, 7, 8, 9])
    items = []
    for k, i in enumerate(ids):
        z, pos = table.geometry(i)
        mol = mole(z, pos, layout.basis)
        h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
        record = MoleculeRecord(k, np.asarray(z), pos, h, mol.intor("int1e_ovlp"))
        items.append(molecule_data(record, layout))
    return to_device(Batch.from_data_list(items), torch.device("cpu"), torch.float32), layout, ids


def build(
    backbone: str, size: str, layout: AOLayout, sparsity: float | None = None
) -> torch.nn.Module:
    spec = get_backbone(backbone)
    params = {}
    if size != "paper":
        params = dict(load_config(size, None, {"model": {"backbone": backbone}}).model.params)
    if backbone == "sphnet" and sparsity is not None:
        params["sparsity"] = sparsity
    config = spec.config(**params)
    torch.manual_seed(0)
    solver = ReducedSolver(spec, config, layout, reads_h=False, reads_s=False)
    if backbone == "sphnet":  # time it as it trains for most of its run: paths frozen
        solver.backbone.training_step(1, 1)
    return solver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("paper", "qh9-small"), default="paper")
    parser.add_argument("--molecules", type=int, default=8)
    parser.add_argument("--atoms", type=int, default=18)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--sparsity", type=float, nargs="+", default=[None], help="SPHNet sparsities to time"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}, {args.threads} threads")
    batch, layout, ids = qh9_batch(args.molecules, args.atoms)
    print(f"{args.size}: {len(ids)} QH9-stable-id train molecules of {args.atoms} atoms: {ids}")
    rows = {}
    runs = [("qhnet", None)] + [("sphnet", s) for s in args.sparsity]
    for backbone, sparsity in runs:
        solver = build(backbone, args.size, layout, sparsity)
        name = backbone if sparsity is None else f"{backbone} (sparsity {sparsity:g})"
        optimizer = torch.optim.AdamW(solver.parameters(), lr=1e-4)

        def forward(solver=solver):
            solver.eval()
            with torch.no_grad():
                solver(batch, None, solver.inject(batch))

        def step(solver=solver, optimizer=optimizer):
            solver.train()
            loss = hamiltonian_loss(solver(batch, None, solver.inject(batch)), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timing = {}
        for kind, fn in (("forward", forward), ("step", step)):
            fn()  # warm-up
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            timing[kind] = statistics.median(times)
        rows[name] = (sum(p.numel() for p in solver.parameters()), timing)
        print(f"{name}: {rows[name]}", flush=True)
    base = rows["qhnet"][1]
    print("\n| backbone | parameters | forward (s) | training step (s) | step / QHNet's |")
    print("|---|---:|---:|---:|---:|")
    for backbone, (n, t) in rows.items():
        print(
            f"| {backbone} | {n:,} | {t['forward']:.3f} | {t['step']:.3f} | "
            f"{t['step'] / base['step']:.2f}x |"
        )
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
