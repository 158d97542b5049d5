"""The DEQ's cost: training-step time of DEQHNet (diagonal and full feedback) against QHNet's,
in one run, with where the DEQ step spends it.

    python benchmarks/bench_deq_cost.py [--size qh9-small|paper] [--threads 2] [--repeat 5]

``qh9-small``: the preset's model and DEQ settings (6 training evaluations, f_tol 1e-3 Ha) on a
batch of 8 random QH9-stable-id train molecules of the shared data (<= 10 atoms). ``paper``: the
paper-size QHNet (QHNetConfig defaults) with the paper's QH9 DEQ settings (3/3 iterations) on the
4 largest of those molecules. Untrained weights (seeded), float32, an AdamW step included; the
untrained DEQ runs its full evaluation budget, as early training does.

For each variant: the median step time and the ratio to QHNet's; for the DEQ variants the parts
of a step: the H-independent injection (once), the forward solve's evaluations (no graph),
the evaluation with the gradient (phantom step), and the rest (backward, loss, optimiser,
the solver's bookkeeping). Time only on an idle machine (``/proc/loadavg`` is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from deqh_backbones.qhnet import QHNetConfig
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.solvers.deq import DEQConfig
from deqh_core.training.config import load_config
from deqh_core.training.metrics import hamiltonian_loss
from deqh_core.training.model import HamiltonianModel
from deqh_core.training.trainer import make_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qh9_stable_small.db"
VARIANTS = {  # name: (deq, overlap, feedback)
    "QHNet": (False, False, "diagonal"),
    "QHNet w/ S": (False, True, "diagonal"),
    "DEQHNet": (True, True, "diagonal"),
    "DEQHNet full": (True, True, "full"),
}


class PartTimer:
    """Wall time of the inner solver's calls during a step, by kind."""

    def __init__(self, solver):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        inject = solver.inject

        def timed_inject(batch):
            start = time.perf_counter()
            try:
                return inject(batch)
            finally:
                self.seconds["inject"] += time.perf_counter() - start

        solver.inject = timed_inject
        solver.register_forward_pre_hook(self._start)
        solver.register_forward_hook(self._stop)

    def _start(self, module, args):
        self._t = time.perf_counter()

    def _stop(self, module, args, output):
        kind = "evaluation with gradient" if torch.is_grad_enabled() else "solve evaluations"
        self.seconds[kind] += time.perf_counter() - self._t
        self.calls[kind] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def batch_of(size: str, layout_basis: str = "def2-svp") -> tuple[Batch, object]:
    cfg = load_config("qh9-small", None, {"data": {"path": str(SHARED)}})
    dataset = HamiltonianDataset(SHARED, basis=layout_basis)
    train = make_split(dataset, cfg.data).train
    if size == "paper":
        sizes = {i: len(z) for i, z, _ in dataset.structures(train)}
        ids = sorted(train, key=lambda i: (-sizes[i], i))[:4]
    else:  # a batch as training draws them: 8 random train molecules (the first ids are tiny)
        ids = sorted(np.random.default_rng(0).choice(train, 8, replace=False).tolist())
    subset = HamiltonianDataset(
        SHARED, basis=layout_basis, ids=ids, overlap="onsite", dtype=torch.float32
    )
    return Batch.from_data_list([subset[i] for i in range(len(ids))]), subset.layout


def build(size: str, variant: str, layout) -> tuple[HamiltonianModel, DEQConfig]:
    deq, overlap, feedback = VARIANTS[variant]
    cfg = load_config("qh9-small", None, {"data": {"path": str(SHARED)}})
    params = cfg.model.params if size == "qh9-small" else QHNetConfig().model_dump()
    model_cfg = cfg.model.model_copy(update={"deq": deq, "overlap": overlap, "params": params})
    deq_cfg = cfg.deq if size == "qh9-small" else DEQConfig.preset("qh9")
    deq_cfg = deq_cfg.model_copy(update={"feedback": feedback})
    torch.manual_seed(0)
    return HamiltonianModel(model_cfg, layout, deq_cfg), deq_cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("qh9-small", "paper"), default="qh9-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}, {args.threads} threads")
    batch, layout = batch_of(args.size)
    print(f"{args.size}: batch of {batch.num_graphs} molecules, {batch.num_nodes} atoms")
    results = {}
    for variant in VARIANTS:
        model, _ = build(args.size, variant, layout)
        model.train()
        timer = PartTimer(model.net.solver) if model.config.deq else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer):
            blocks, _ = model(batch)
            loss = hamiltonian_loss(blocks, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        times, parts = [], []
        for _ in range(args.repeat):
            if timer:
                timer.reset()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            if timer:
                parts.append((dict(timer.seconds), dict(timer.calls)))
        n_params = sum(p.numel() for p in model.parameters())
        results[variant] = (statistics.median(times), parts, n_params)
    base = results["QHNet"][0]
    print("\n| variant | parameters | step (s) | / QHNet |")
    print("|---|---:|---:|---:|")
    for variant, (seconds, _, n) in results.items():
        print(f"| {variant} | {n:,} | {seconds:.3f} | {seconds / base:.2f}x |")
    for variant, (seconds, parts, _) in results.items():
        if not parts:
            continue
        kinds = ("inject", "solve evaluations", "evaluation with gradient")
        mean = {k: statistics.mean(p[0].get(k, 0.0) for p in parts) for k in kinds}
        calls = statistics.mean(p[1].get("solve evaluations", 0) for p in parts)
        rest = seconds - sum(mean.values())
        print(
            f"{variant}: inject {mean['inject']:.3f} s, {calls:.0f} solve evaluations "
            f"{mean['solve evaluations']:.3f} s ({mean['solve evaluations'] / max(calls, 1):.3f} "
            f"each), evaluation with gradient {mean['evaluation with gradient']:.3f} s, "
            f"rest (backward, optimiser, bookkeeping) {rest:.3f} s"
        )
    print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
