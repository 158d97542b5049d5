"""The data path at QH9's scale: how fast molecules reach the model, and that memory stays flat.

Builds a synthetic QH9-schema file of QM9 geometries (``qm9pack``, spread evenly over QH9-stable
so sizes are QM9's; the labels are random symmetric matrices of the right size, since the data
path never looks at the values), then measures, in one run:

1. molecules/s of the training loader (the trainer's items: on-site overlap blocks, float32,
   random batches of 32) with 0 and with 2 worker processes;
2. peak RSS of one whole epoch over the first 2,000 and over all 20,000 molecules, each in a
   fresh process (this process plus its workers): memory must not grow with the file;
3. for comparison, the paper-size QHNet's training throughput on this CPU (molecules/s) on the
   same molecules.

    python benchmarks/bench_data.py                      # 20,000 molecules, ~5 GB in a temp dir
    python benchmarks/bench_data.py --molecules 2000 --small 200 --model-steps 1   # smoke test

Needs ``pip install 'deqh[qm9]'``. Time it on an idle machine (``/proc/loadavg``).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deqh_core.ao.basis import AOLayout
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.store import HamiltonianDB, MoleculeRecord

ELEMENTS = [1, 6, 7, 8, 9]


def build(path: Path, ids: np.ndarray) -> float:
    """Write the molecules ``ids`` (QH9-stable ids) with random symmetric labels; seconds."""
    from deqh_core.data.qm9 import qm9_table

    table = qm9_table()
    layout = AOLayout("def2-svp", ELEMENTS)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with HamiltonianDB(path, "a") as db:
        db.set_recipe({"basis": "def2-svp", "matrix": "random symmetric (benchmark)"})
        for i in ids:
            z, pos = table.geometry(int(i))
            n = int(layout.n_ao_table[z].sum())
            a = rng.standard_normal((n, n))
            db.write(MoleculeRecord(int(i), z, pos, hamiltonian=a + a.T))
    return time.perf_counter() - start


def loader(path: Path, workers: int, batch: int, ids=None):
    from torch_geometric.loader import DataLoader

    data = HamiltonianDataset(path, ids=ids, dtype=torch.float32, overlap="onsite")
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    g = torch.Generator().manual_seed(0)
    return data, DataLoader(
        data, batch_size=batch, shuffle=True, generator=g, num_workers=workers, **extra
    )


def throughput(path: Path, workers: int, batch: int, n_batches: int) -> float:
    """Molecules/s through the loader after its first batch (workers started)."""
    _, batches = loader(path, workers, batch)
    it = iter(batches)
    next(it)
    start, count = time.perf_counter(), 0
    for _ in range(n_batches):
        count += next(it).num_graphs
    return count / (time.perf_counter() - start)


def epoch(path: Path, n: int, workers: int, batch: int) -> dict:
    """One epoch over the first ``n`` molecules of ``path``; peak RSS in MiB (run in a fresh
    process: ``--epoch``)."""
    _, batches = loader(path, workers, batch, ids=HamiltonianDB(path).ids()[:n])
    start, count = time.perf_counter(), 0
    for b in batches:
        count += b.num_graphs
    seconds = time.perf_counter() - start
    del batches, b  # shuts the persistent workers down: RUSAGE_CHILDREN counts ended children
    gc.collect()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"molecules": count, "seconds": seconds, "rss_mib": own, "worker_rss_mib": workers_peak}


def model_throughput(path: Path, batch: int, steps: int) -> float:
    """Training molecules/s of the paper-size QHNet (float32) on this machine's CPU."""
    from torch_geometric.data import Batch

    from deqh_core.training.config import ModelConfig
    from deqh_core.training.metrics import hamiltonian_loss
    from deqh_core.training.model import HamiltonianModel

    data, _ = loader(path, 0, batch)
    model = HamiltonianModel(ModelConfig(backbone="qhnet"), data.layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    times = []
    for k in range(steps + 1):
        b = Batch.from_data_list([data[k * batch + j] for j in range(batch)])
        start = time.perf_counter()
        pred, _ = model(b)
        loss = hamiltonian_loss(pred, b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if k:  # the first step builds caches
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000, help="molecules of the small epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60, help="batches timed per loader")
    parser.add_argument("--model-batch", type=int, default=8)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="keep the synthetic file here")
    parser.add_argument("--epoch", nargs=2, metavar=("FILE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch:  # child mode: one epoch, print JSON
        result = epoch(Path(args.epoch[0]), int(args.epoch[1]), args.workers, args.batch)
        print(json.dumps(result))
        return

    folder = args.dir or Path(tempfile.mkdtemp(prefix="deqh-bench-data-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"qm9_synthetic_{args.molecules}.db"
    ids = np.unique(np.linspace(0, 130_830, args.molecules).astype(np.int64))
    if not path.exists():
        seconds = build(path, ids)
        print(
            f"built {path} ({len(ids):,} molecules, {path.stat().st_size / 2**30:.2f} GiB) "
            f"in {seconds:.0f} s"
        )
    torch.set_num_threads(1)
    rates = {w: throughput(path, w, args.batch, args.batches) for w in (0, args.workers)}
    epochs = {}
    for n in (args.small, len(ids)):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--epoch",
                str(path),
                str(n),
                "--workers",
                str(args.workers),
                "--batch",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        epochs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    model = model_throughput(path, args.model_batch, args.model_steps)

    print(f"\nloader, batches of {args.batch}, on-site overlaps, float32:")
    for w, rate in rates.items():
        per = f" ({rate / w:.0f} per worker)" if w else ""
        print(f"  {w} workers: {rate:8.0f} molecules/s{per}")
    print(f"\none epoch with {args.workers} workers, fresh process each:")
    for n, e in epochs.items():
        print(
            f"  {n:>6,} molecules: {e['seconds']:6.1f} s, peak RSS {e['rss_mib']:.0f} MiB "
            f"(+ workers {e['worker_rss_mib']:.0f} MiB)"
        )
    small, large = (epochs[n]["rss_mib"] + epochs[n]["worker_rss_mib"] for n in epochs)
    print(f"  peak RSS ratio {len(ids):,} / {args.small:,} molecules: {large / small:.2f}x")
    print(
        f"\npaper-size QHNet training on this CPU ({torch.get_num_threads()} thread, "
        f"batch {args.model_batch}): {model:.2f} molecules/s"
    )
    print(f"loader with {args.workers} workers / model: {rates[args.workers] / model:.0f}x")
    if args.dir is None:
        shutil.rmtree(folder)  # the synthetic file is GBs; --dir keeps it


if __name__ == "__main__":
    main()
