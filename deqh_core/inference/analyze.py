"""Convergence analyses of a trained model (paper Fig. 4, Fig. 6 / A.10).

* :func:`convergence_traces` (Fig. 4b): the Hamiltonian's mean absolute error against the label
  at every iteration of PySCF's SCF (the Fock matrix of each cycle's density), of the DEQ's
  fixed-point iteration started from the identity and of the same iteration started from
  PySCF's ``minao`` Fock matrix. Iteration 0 is the starting matrix.
* :func:`training_nfe` / :func:`checkpoint_nfe` (Fig. 4a): DEQ iterations against training step,
  from the run's ``metrics.csv`` (``deq_nfe`` of training batches and validations) and, for any
  checkpoints kept along the run, from inference on a few molecules.
* :func:`noise_orbital_errors` (Fig. 6): occupied orbital-energy error of a true Hamiltonian
  plus symmetric Gaussian noise of growing size.

Every analysis returns plain rows (written as CSV) and has a ``plot_*`` function (PNG).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqh_core.ao.blocks import assemble, split
from deqh_core.ao.orbitals import occupied_count, orbital_energies
from deqh_core.data.recipe import Recipe
from deqh_core.inference.loaded import LoadedModel
from deqh_core.inference.scf import _mole, run_scf
from deqh_core.solvers.deq import identity_blocks
from deqh_core.solvers.prior import InitialGuess
from deqh_core.solvers.protocol import Blocks
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import atomic_open

# ----------------------------------------------------------------------------------------------
# Fig. 4b: error against iteration


def scf_trace(
    recipe: Recipe,
    atomic_numbers: Sequence[int],
    positions: np.ndarray,
    reference: np.ndarray,
    guess: str = "minao",
) -> list[float]:
    """Mean absolute error (Hartree) against ``reference`` (``[n_ao, n_ao]``, PySCF order) of
    the Fock matrix at the start (the guess density's) and after every cycle of PySCF's SCF
    started from ``guess``."""

    mol = _mole(recipe, atomic_numbers, positions)
    mf = recipe.rks(mol)
    start = mf.get_fock(dm=mf.get_init_guess(key=guess))
    run, _ = run_scf(recipe, mol, guess, reference=reference)
    if run.error is not None:
        raise DeqhError(f"PySCF SCF from {guess!r} failed: {run.error}")
    return [float(np.abs(start - reference).mean()), *run.mae_trace]


def deq_trace(
    loaded: LoadedModel, item, reference: np.ndarray, start: np.ndarray | None, iterations: int
) -> tuple[list[float], list[float]]:
    """The DEQ's fixed-point iteration ``H_{k+1} = f(H_k)`` on one molecule, ``iterations``
    steps from ``start`` (``[n_ao, n_ao]`` PySCF order; None: the identity).

    The damping of a ``fixed_point_iter``/``anderson`` forward solver (``deq.f_tau``) is applied;
    Anderson and Broyden reach the same fixed point along another path, so the trace shows the
    map the DEQ solves rather than the solver's exact iterates. Returns the mean absolute error
    of every ``H_k`` against ``reference`` (k = 0 is the start) and the residuals
    ``||H_{k+1} - H_k||_F`` (Hartree).
    """
    if not loaded.config.model.deq:
        raise DeqhError("the checkpoint is a predictor (no --deq): it has no iteration to trace")
    solver = loaded.model.net.solver
    deq = loaded.config.deq
    tau = 1.0 if deq.f_solver == "broyden" else deq.f_tau
    batch = loaded.batch([item])
    ref = torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
    with torch.no_grad():
        if start is None:
            h = identity_blocks(batch, loaded.dtype)
        else:
            flat = torch.as_tensor(start, dtype=loaded.dtype, device=loaded.device)
            h = Blocks(*split(flat.reshape(-1), batch))
        injection = solver.inject(batch)
        flat = assemble(h.diag, h.off, batch)
        maes = [float((flat.double().cpu() - ref).abs().mean())]
        residuals = []
        for _ in range(iterations):
            nxt = solver(batch, h, injection)
            if tau != 1.0:
                nxt = Blocks(tau * nxt.diag + (1 - tau) * h.diag, tau * nxt.off + (1 - tau) * h.off)
            new = assemble(nxt.diag, nxt.off, batch)
            residuals.append(float((new - flat).double().norm()))
            h, flat = nxt, new
            maes.append(float((flat.double().cpu() - ref).abs().mean()))
    return maes, residuals


def convergence_traces(
    loaded: LoadedModel, record, recipe: Recipe, iterations: int = 15
) -> dict[str, list[float]]:
    """Fig. 4b for one labelled molecule: ``{"PySCF SCF (minao)": [...], "DEQ from identity":
    [...], "DEQ from minao": [...]}``, each the H mean absolute error (Hartree) per iteration,
    iteration 0 being the start. A predictor checkpoint gives ``{"prediction": [mae]}`` instead
    of the DEQ traces."""
    label = record.hamiltonian
    traces = {
        "PySCF SCF (minao)": scf_trace(recipe, record.atomic_numbers, record.positions, label)
    }
    item = loaded.item(record.atomic_numbers, record.positions, recipe, label)
    if not loaded.config.model.deq:
        h, _, _ = loaded.predict(item)
        traces["prediction"] = [float(np.abs(h - label).mean())]
        return traces
    traces["DEQ from identity"] = deq_trace(loaded, item, label, None, iterations)[0]
    minao = InitialGuess(recipe, "minao").matrix(record.atomic_numbers, record.positions)
    traces["DEQ from minao"] = deq_trace(loaded, item, label, minao, iterations)[0]
    return traces


def plot_convergence(traces: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Fig. 4b as a PNG: H MAE (log scale) against iteration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, trace in traces.items():
        if len(trace) == 1:
            ax.axhline(trace[0], ls="--", color="grey", label=name)
        else:
            ax.plot(range(len(trace)), trace, marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration (0 = start)")
    ax.set_ylabel("H MAE against label, Hartree")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Fig. 4a: DEQ iterations against training step


def training_nfe(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"step", "split", "deq_nfe"}`` of a run's ``metrics.csv`` that carry a DEQ count:
    ``split="train"`` rows are the forward-solver evaluations of one training batch (every
    ``run.log_every`` steps), ``split="val"`` the mean over the validation set."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such file (is {run_dir} a training run directory?)")
    with path.open() as f:
        rows = [
            {"step": int(r["step"]), "split": r["split"], "deq_nfe": float(r["deq_nfe"])}
            for r in csv.DictReader(f)
            if r.get("deq_nfe")
        ]
    if not rows:
        raise DataError(f"{path}: no deq_nfe values (not a --deq run?)")
    return rows


def checkpoint_nfe(models: Sequence[LoadedModel], records: Sequence) -> list[dict[str, Any]]:
    """DEQ evaluations at inference, per DEQ model, over ``records`` (the paper's Fig. 4a
    protocol: checkpoints saved along training, 50 test molecules). Rows ``{"checkpoint",
    "step", "nfe_mean", "nfe_std", "molecules"}`` sorted by step."""
    rows = []
    for loaded in models:
        items = (loaded.item(r.atomic_numbers, r.positions, label=r.hamiltonian) for r in records)
        nfe = [loaded.predict(item)[2].nfe for item in items]
        rows.append(
            {
                "checkpoint": str(loaded.path),
                "step": loaded.step,
                "nfe_mean": float(np.mean(nfe)),
                "nfe_std": float(np.std(nfe)),
                "molecules": len(nfe),
            }
        )
    return sorted(rows, key=lambda r: r["step"])


def plot_training_nfe(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    checkpoints: Sequence[dict[str, Any]] = (),
    title: str = "",
) -> Path:
    """Fig. 4a as a PNG: DEQ evaluations against training step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for part, style in (("train", {"lw": 1, "alpha": 0.6}), ("val", {"marker": "o", "ms": 4})):
        sel = [r for r in rows if r["split"] == part]
        if sel:
            label = "training batch" if part == "train" else "validation mean"
            ax.plot([r["step"] for r in sel], [r["deq_nfe"] for r in sel], label=label, **style)
    if checkpoints:
        ax.errorbar(
            [r["step"] for r in checkpoints],
            [r["nfe_mean"] for r in checkpoints],
            yerr=[r["nfe_std"] for r in checkpoints],
            fmt="s",
            capsize=3,
            label="checkpoint inference",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("DEQ forward evaluations")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Fig. 6: orbital-energy error against Hamiltonian noise


def hermitian_noise(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Real symmetric Gaussian noise ``[n, n]``: the entries ``E_ij = E_ji`` (``i <= j``) are
    independent with standard deviation ``sigma`` (Hartree), so ``mean |E| ≈ sigma·sqrt(2/pi)``."""
    g = rng.normal(0.0, sigma, size=(n, n))
    return np.triu(g) + np.triu(g, 1).T


def noise_orbital_errors(
    hamiltonian: np.ndarray,
    overlap: np.ndarray,
    n_occ: int,
    levels: Sequence[float],
    samples: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Orbital-energy errors of ``H + E`` against ``H`` (both ``[n_ao, n_ao]``, Hartree) for
    ``samples`` draws of :func:`hermitian_noise` at each ``sigma`` in ``levels``.

    Rows ``{"sigma", "sample", "h_mae", "occ_mae", "homo_err", "lumo_err"}``: the noise's mean
    absolute value, the mean absolute error of the ``n_occ`` occupied orbital energies and the
    absolute HOMO and LUMO errors, all in Hartree.
    """

    h = np.asarray(hamiltonian, dtype=np.float64)
    eps = orbital_energies(h, overlap)
    rng = np.random.default_rng(seed)
    rows = []
    for sigma in levels:
        for k in range(samples):
            e = hermitian_noise(len(h), float(sigma), rng)
            noisy = orbital_energies(h + e, overlap)
            diff = np.abs(noisy - eps)
            rows.append(
                {
                    "sigma": float(sigma),
                    "sample": k,
                    "h_mae": float(np.abs(e).mean()),
                    "occ_mae": float(diff[:n_occ].mean()),
                    "homo_err": float(diff[n_occ - 1]),
                    "lumo_err": float(diff[n_occ]) if n_occ < len(h) else math.nan,
                }
            )
    return rows


def plot_noise(rows: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Fig. 6 as a PNG: occupied orbital-energy MAE against the noise's H MAE (log-log), the
    median with the 10-90 % band and every sample; the dotted line is ``y = x``."""
    plt = _pyplot()
    levels = sorted({r["sigma"] for r in rows})
    x = np.array([np.mean([r["h_mae"] for r in rows if r["sigma"] == s]) for s in levels])
    ys = [np.array([r["occ_mae"] for r in rows if r["sigma"] == s]) for s in levels]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([r["h_mae"] for r in rows], [r["occ_mae"] for r in rows], s=4, alpha=0.3)
    ax.plot(x, [np.median(y) for y in ys], marker="o", label="median")
    ax.fill_between(
        x,
        [np.percentile(y, 10) for y in ys],
        [np.percentile(y, 90) for y in ys],
        alpha=0.25,
        label="10-90 %",
    )
    ax.plot(x, x, ls=":", color="k", label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("H MAE of the noise, Hartree")
    ax.set_ylabel("occupied orbital-energy MAE, Hartree")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# helpers


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows of dicts as CSV (columns: the union of keys, in first-seen order)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def trace_rows(traces: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [
        {"method": name, "iteration": k, "h_mae": mae}
        for name, trace in traces.items()
        for k, mae in enumerate(trace)
    ]


def _pyplot():
    # matplotlib only where a plot is drawn (start-up time)
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib only where a plot is drawn (start-up time)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=150)
    _pyplot().close(fig)
    return Path(path)


def pick_record(records: list, mol_id: int | None, where: str = "the selected molecules"):
    """The record with id ``mol_id`` (default: the first) among ``records`` (``where`` names
    them in the error)."""
    if mol_id is None:
        return records[0]
    for r in records:
        if r.id == mol_id:
            return r
    raise DataError(f"--molecule-id {mol_id}: no such molecule in {where}")


def noise_analysis(
    record,
    recipe: Recipe,
    levels: Sequence[float],
    samples: int,
    out: str | Path,
    name: str,
    seed: int = 0,
) -> tuple[list[dict[str, float]], Path]:
    """Fig. 6 for one labelled ``record``: :func:`noise_orbital_errors` of its label (ECP-aware
    occupation), written to ``noise.csv`` and ``noise.png`` in ``out``; returns the rows and the
    PNG."""

    mol = recipe.mole(record.atomic_numbers, record.positions)
    overlap = record.overlap if record.overlap is not None else mol.intor("int1e_ovlp")
    n_occ = occupied_count(record.atomic_numbers, recipe.basis, recipe.charge, mol.nao)
    rows = noise_orbital_errors(record.hamiltonian, overlap, n_occ, levels, samples, seed)
    write_rows(rows, Path(out) / "noise.csv")
    return rows, plot_noise(rows, Path(out) / "noise.png", name)
