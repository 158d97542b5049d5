"""Time block split/assemble on a batch of QH9-sized molecules against a Python-loop baseline.

    python benchmarks/bench_blocks.py [--molecules 32] [--atoms 20] [--repeat 20]

The baseline slices each atom and atom pair out of each full matrix in Python loops (the
reference implementations' approach); deqh uses one gather / one scatter per batch. Time on an
idle machine (check /proc/loadavg).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout
from deqh_core.ao.blocks import assemble, block_data, flatten, split
from deqh_core.ao.convention import convert


def molecules(n_mol: int, n_atoms: int, rng: np.random.Generator):
    # QH9-like composition: about half hydrogens, the rest C/N/O/F
    return [rng.choice([1, 1, 1, 1, 6, 6, 6, 7, 8, 9], size=n_atoms) for _ in range(n_mol)]


def loop_split(mats, zs, layout):
    """Baseline: per molecule convert to model order, then slice every atom and pair."""
    ao, _ = layout.slot_tables("e3nn")
    diag, off = [], []
    for m, z in zip(mats, zs):
        m = convert(m, layout, z, "pyscf", "e3nn")
        n = [layout.n_ao(int(e)) for e in z]
        start = np.cumsum([0, *n])
        for i in range(len(z)):
            for j in range(len(z)):
                block = m.new_zeros(layout.width, layout.width)
                si, sj = torch.from_numpy(ao[z[i]] >= 0), torch.from_numpy(ao[z[j]] >= 0)
                sub = m[start[i] : start[i + 1], start[j] : start[j + 1]]
                block[si.nonzero()[:, 0][:, None], sj.nonzero()[:, 0][None, :]] = sub
                (diag if i == j else off).append(block)
    return torch.stack(diag), torch.stack(off)


def loop_assemble(diag, off, zs, layout):
    ao, _ = layout.slot_tables("e3nn")
    mats, d, o = [], 0, 0
    for z in zs:
        n = [layout.n_ao(int(e)) for e in z]
        start = np.cumsum([0, *n])
        m = diag.new_zeros(start[-1], start[-1])
        for i in range(len(z)):
            for j in range(len(z)):
                if i == j:
                    block, d = diag[d], d + 1
                else:
                    block, o = off[o], o + 1
                si, sj = torch.from_numpy(ao[z[i]] >= 0), torch.from_numpy(ao[z[j]] >= 0)
                m[start[i] : start[i + 1], start[j] : start[j + 1]] = block[si][:, sj]
        mats.append(convert(m, layout, z, "e3nn", "pyscf"))
    return mats


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=32)
    parser.add_argument("--atoms", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    layout = AOLayout("def2-svp", [1, 6, 7, 8, 9])
    zs = molecules(args.molecules, args.atoms, rng)
    mats = []
    for z in zs:
        n = int(layout.n_ao_table[z].sum())
        a = torch.from_numpy(rng.normal(size=(n, n)))
        mats.append((a + a.T) / 2)
    t = time.perf_counter()
    items = []
    for z in zs:
        items.append(block_data(layout, z))
    t_tables = (time.perf_counter() - t) / len(zs)
    batch = Batch.from_data_list(items)
    flat = flatten(mats)

    def fresh_split():
        batch.__dict__.pop("_block_gather", None)
        return split(flat, batch)

    diag, off = split(flat, batch)
    ref_diag, ref_off = loop_split(mats, zs, layout)
    assert torch.equal(diag, ref_diag) and torch.equal(off, ref_off)
    assert all(torch.equal(a, b) for a, b in zip(loop_assemble(diag, off, zs, layout), mats))

    n_ao = sum(m.shape[0] for m in mats)
    print(
        f"batch: {args.molecules} molecules x {args.atoms} atoms, {n_ao} AOs, "
        f"{len(off)} pair blocks of {layout.width}x{layout.width}, float64, 2 threads"
    )
    print(f"  block tables, once per molecule         {t_tables * 1e3:8.3f} ms/molecule")
    rows = [
        ("split, gather indices cached on batch", best(lambda: split(flat, batch), args.repeat)),
        ("split, gather indices rebuilt", best(fresh_split, args.repeat)),
        ("assemble", best(lambda: assemble(diag, off, batch), args.repeat)),
        ("baseline split (Python loops)", best(lambda: loop_split(mats, zs, layout), 3)),
        ("baseline assemble (Python loops)", best(lambda: loop_assemble(diag, off, zs, layout), 3)),
    ]
    for name, sec in rows:
        print(f"  {name:40s} {sec * 1e3:8.2f} ms/batch")
    base_split, base_assemble = rows[3][1], rows[4][1]
    print(
        f"  speed-up over baseline: split {base_split / rows[0][1]:.0f}x cached, "
        f"{base_split / rows[1][1]:.0f}x with index build; "
        f"assemble {base_assemble / rows[2][1]:.0f}x"
    )


if __name__ == "__main__":
    main()
