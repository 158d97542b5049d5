"""Speed and memory of QHNet and DEQHNet under each ops backend, on one device, in one run.

    python benchmarks/bench_ops.py --device cuda                  # paper size, every backend
    python benchmarks/bench_ops.py --device cpu --threads 2 --backends fused e3nn
    python benchmarks/bench_ops.py --tiny                          # smoke test: tiny sizes

Models: QHNet (the predictor) and DEQHNet (reads H and S, DEQ-wrapped with the paper's preset
of the system: ``qh9`` = 3/3 iterations, ``md17`` = 40/40 with tolerance), at the paper's size
(the config defaults; ``--params`` overrides), float32, untrained. Every backend computes the
*same* model: one set of weights, one copy per backend (``deqh_core.ops.use_backend``).

Systems: ``qh9`` = a QH9-sized batch (``--qh9-batch`` 32 QM9-like molecules, about 18 atoms
each), ``ethanol`` and ``uracil`` = MD17-sized batches (``--md17-batch`` 5 thermal copies);
from ``benchmarks/gpu_inputs/`` (written by ``benchmarks/gpu_inputs.py``; without PySCF its
precomputed basis data is used), labelled with the core Hamiltonian.

Measured per (model, system, backend): ``forward`` (eval mode, no gradient) and ``train`` (train
mode: forward, eq.-45 loss, backward, AdamW step), the median over ``--repeat`` runs after
``--warmup``; the backends take turns within each repetition (rotating order), so drifts of a
shared machine hit them alike. Peak memory per measurement: CUDA ``max_memory_allocated``; CPU
the process's peak resident set size (``VmHWM``, reset before each measurement). Then the
ratios between backends (time / e3nn's) and DEQHNet / QHNet per backend. ``--compile`` also
times ``torch.compile`` of QHNet's forward per backend (first call = compile time).

Timings are only meaningful on an otherwise idle machine (``/proc/loadavg`` is printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import gpu_inputs
import torch
from torch_geometric.data import Batch

VARIANTS = {"QHNet": (False, False), "DEQHNet": (True, True)}  # (reads H, reads S)
SYSTEMS = {"qh9": ("qm9-like", "qh9"), "ethanol": ("ethanol", "md17"), "uracil": ("uracil", "md17")}
TINY = {
    "l_max": 2,
    "channels": 8,
    "bottleneck": 4,
    "layers": 2,
    "interaction_layers": 1,
    "num_rbf": 8,
    "radial_hidden": 8,
    "filter_irreps": "8x0e+4x1o+4x2e",
    "filter_channels": 4,
    "attention_heads": 2,
    "filter_radial_hidden": 8,
}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


class Memory:
    """Peak memory of one measurement, in MB."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # "5" resets the peak resident set size (Linux)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(variant: str, params: dict, layout, backends: list[str], device) -> dict:
    """One solver per backend, all with the weights of the first (seeded)."""
    from deqh_backbones.qhnet import QHNetConfig
    from deqh_core.ops import use_backend
    from deqh_core.plugins.manager import get_backbone
    from deqh_core.solvers.backbone import ReducedSolver

    reads_h, reads_s = VARIANTS[variant]
    torch.manual_seed(0)
    solver = ReducedSolver(get_backbone("qhnet"), QHNetConfig(**params), layout, reads_h, reads_s)
    return {b: use_backend(copy.deepcopy(solver), b).to(device) for b in backends}


def wrap(solvers: dict, deq_preset: str, overrides: dict) -> dict:
    """DEQ-wrapped solvers (with the system's preset) for a solver that reads H."""
    from deqh_core.solvers.deq import DEQConfig, DEQHamiltonianSolver

    config = DEQConfig.preset(deq_preset, **overrides)
    return {
        b: DEQHamiltonianSolver(s, config) if s.capabilities.reads_h else s
        for b, s in solvers.items()
    }


def run(model, batch):
    """Blocks and the DEQ's function evaluations (None for the predictor)."""
    from deqh_core.solvers.deq import DEQHamiltonianSolver

    if isinstance(model, DEQHamiltonianSolver):
        blocks, diagnostics = model(batch)
        return blocks, diagnostics.nfe
    return model(batch, None, model.inject(batch)), None


def optimizer_for(model, device):
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-5)


def measure(models: dict, batch, kind: str, args, device, memory: Memory) -> dict:
    """``{backend: (median seconds, peak MB, nfe)}`` for ``kind`` in ``forward``/``train``."""
    from deqh_core.training.metrics import hamiltonian_loss

    optimizers = {}

    def step(backend):
        model = models[backend]
        if kind == "forward":
            with torch.no_grad():
                return run(model, batch)[1]
        blocks, nfe = run(model, batch)
        loss = hamiltonian_loss(blocks, batch)
        opt = optimizers.setdefault(backend, optimizer_for(model, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return nfe

    for model in models.values():
        model.train(kind == "train")
    names = list(models)
    times = {b: [] for b in names}
    peaks = {b: 0.0 for b in names}
    nfe = {b: None for b in names}
    for backend in names:  # warm-up: kernels built, allocator and autotuning settled
        for _ in range(args.warmup):
            step(backend)
    for rep in range(args.repeat):
        for backend in names[rep % len(names) :] + names[: rep % len(names)]:
            synchronize(device)
            memory.reset()
            start = time.perf_counter()
            nfe[backend] = step(backend)
            synchronize(device)
            times[backend].append(time.perf_counter() - start)
            peaks[backend] = max(peaks[backend], memory.peak())
    return {b: (statistics.median(times[b]), peaks[b], nfe[b]) for b in names}


def compile_attempt(models: dict, batch, args, device) -> dict:
    """``{backend: (compile + first call s, median compiled forward s) | error text}``."""
    out = {}
    for backend, model in models.items():
        model.eval()
        try:
            compiled = torch.compile(lambda b, m=model: m(b, None, m.inject(b)))
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                compiled(batch)
            synchronize(device)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeat):
                synchronize(device)
                start = time.perf_counter()
                with torch.no_grad():
                    compiled(batch)
                synchronize(device)
                times.append(time.perf_counter() - start)
            out[backend] = (first, statistics.median(times))
            print(f"  compiled {backend}: first call {first:.1f} s, then {times[-1] * 1e3:.1f} ms")
        except Exception as err:  # an attempt: report, do not stop the benchmark
            traceback.print_exc(limit=3)
            out[backend] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            print(f"  compiled {backend}: FAILED {out[backend]}", flush=True)
    return out


def batches(args, layout, device, dtype) -> dict:
    from deqh_core.data.dataset import HamiltonianDataset
    from deqh_core.training.trainer import to_device

    out = {}
    for name in args.systems:
        path = gpu_inputs.dataset(SYSTEMS[name][0], args.inputs)
        if not path.is_file():
            sys.exit(f"{path} is missing: run `python benchmarks/gpu_inputs.py` (with PySCF)")
        count = args.qh9_batch if name == "qh9" else args.md17_batch
        data = HamiltonianDataset(path, layout=layout, dtype=dtype)
        batch = Batch.from_data_list([data[i] for i in range(min(count, len(data)))])
        out[name] = to_device(batch, device, dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every installed")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--qh9-batch", type=int, default=32)
    parser.add_argument("--md17-batch", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--params", type=json.loads, default={}, help="QHNet config overrides")
    parser.add_argument("--deq", type=json.loads, default={}, help="DEQ preset overrides")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny model, 2+2 molecules")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--no-train", action="store_true", help="forward only")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument("--inputs", type=Path, default=gpu_inputs.DEFAULT)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.tiny:
        args.params = TINY | args.params
        args.deq = {"f_max_iter": 3, "b_max_iter": 3} | args.deq
        args.qh9_batch, args.md17_batch = min(args.qh9_batch, 2), min(args.md17_batch, 2)
        args.repeat = min(args.repeat, 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    gpu_inputs.use(args.inputs)  # basis data without PySCF
    from deqh_core.ao.basis import AOLayout
    from deqh_core.ops import BACKENDS, cueq_available, cueq_kernels

    device = torch.device(args.device)
    backends = args.backends or [b for b in BACKENDS if b != "cueq" or cueq_available()]
    dtype = torch.float32
    torch.set_default_dtype(dtype)
    layout = AOLayout(gpu_inputs.BASIS, gpu_inputs.ELEMENTS)
    data = batches(args, layout, device, dtype)
    memory = Memory(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cueq = "CUDA kernels" if cueq_kernels() else "naive path" if cueq_available() else "absent"
    print(
        f"torch {torch.__version__} on {name}, {torch.get_num_threads()} threads, float32; "
        f"cuEquivariance: {cueq}; loadavg {loadavg()}"
    )
    print(f"config overrides: {args.params or 'none (paper size)'}; DEQ: {args.deq or 'presets'}")
    for system, batch in data.items():
        atoms, pairs = batch.z.shape[0], batch.pair_index.shape[1]
        print(f"  {system}: {batch.num_graphs} molecules, {atoms} atoms, {pairs} pairs")

    print("measured (ms per call, peak MB, [DEQ evaluations]):", flush=True)
    results = []  # rows: variant, system, kind, backend, seconds, MB, nfe
    compiled = {}
    for variant in args.variants:
        solvers = build(variant, args.params, layout, backends, device)
        params = sum(p.numel() for p in next(iter(solvers.values())).parameters()) / 1e6
        print(f"  {variant}: {params:.2f} M parameters; loadavg {loadavg()}", flush=True)
        for system, batch in data.items():
            models = wrap(solvers, SYSTEMS[system][1], args.deq)
            for kind in ("forward", "train")[: 1 if args.no_train else 2]:
                cells = []  # printed as measured: a run cut short keeps what it measured
                for backend, (sec, mb, nfe) in measure(
                    models, batch, kind, args, device, memory
                ).items():
                    results.append((variant, system, kind, backend, sec, mb, nfe))
                    it = f" [{nfe}]" if nfe is not None else ""
                    cells.append(f"{backend} {sec * 1e3:.1f} ms {mb:.0f} MB{it}")
                print(f"  {variant} {system} {kind}: {' | '.join(cells)}", flush=True)
            if args.compile and variant == "QHNet":
                compiled[system] = compile_attempt(models, batch, args, device)
        del solvers, models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report(results, compiled, backends)
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "compile": compiled}, indent=1))
    print(f"\nloadavg at the end {loadavg()}")


def report(results: list, compiled: dict, backends: list[str]) -> None:
    table = {(v, s, k, b): (sec, mb, nfe) for v, s, k, b, sec, mb, nfe in results}
    keys = list(dict.fromkeys((v, s, k) for v, s, k, *_ in results))
    width = max(len(f"{v} {s} {k}") for v, s, k in keys) + 2
    print("\ntime per call (ms) and peak memory (MB)")
    print("".ljust(width) + "".join(f"{b:>22s}" for b in backends))
    for v, s, k in keys:
        cells = []
        for b in backends:
            sec, mb, nfe = table[(v, s, k, b)]
            it = f" [{nfe}]" if nfe is not None else ""
            cells.append(f"{sec * 1e3:9.1f} ms {mb:7.0f} MB{it}".rjust(22))
        print(f"{v} {s} {k}".ljust(width) + "".join(cells))
    if "e3nn" in backends and len(backends) > 1:
        print("\ntime / e3nn's (below 1: faster than the reference)")
        print("".ljust(width) + "".join(f"{b:>10s}" for b in backends if b != "e3nn"))
        for v, s, k in keys:
            ref = table[(v, s, k, "e3nn")][0]
            cells = [f"{table[(v, s, k, b)][0] / ref:10.2f}" for b in backends if b != "e3nn"]
            print(f"{v} {s} {k}".ljust(width) + "".join(cells))
    variants = {v for v, *_ in keys}
    if {"QHNet", "DEQHNet"} <= variants:
        print("\nDEQHNet / QHNet (the DEQ's overhead), per backend; [n] = DEQ evaluations")
        print("".ljust(width) + "".join(f"{b:>10s}" for b in backends))
        for _, s, k in [key for key in keys if key[0] == "DEQHNet"]:
            cells = []
            for b in backends:
                deq, qh = table.get(("DEQHNet", s, k, b)), table.get(("QHNet", s, k, b))
                cells.append(f"{deq[0] / qh[0]:10.2f}" if deq and qh else f"{'-':>10s}")
            print(f"{s} {k}".ljust(width) + "".join(cells))
    if compiled:
        print("\ntorch.compile of QHNet's forward: compile + first call, then per call")
        for system, per_backend in compiled.items():
            for backend, value in per_backend.items():
                eager = table.get(("QHNet", system, "forward", backend))
                if isinstance(value, str):
                    print(f"  {system} {backend}: FAILED {value}")
                else:
                    speedup = f", {eager[0] / value[1]:.2f}x eager" if eager else ""
                    print(
                        f"  {system} {backend}: compile {value[0]:.1f} s, "
                        f"{value[1] * 1e3:.1f} ms per call{speedup}"
                    )


if __name__ == "__main__":
    main()
