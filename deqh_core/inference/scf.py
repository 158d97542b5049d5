"""DFT acceleration: start PySCF's SCF from a predicted Hamiltonian (paper Table 3, A.8-A.9).

For each molecule the predicted Fock/Kohn-Sham matrix ``H`` (``[n_ao, n_ao]``, PySCF AO order,
Hartree) gives a closed-shell density (occupied orbitals of ``H C = S C eps``), and PySCF's SCF
with the dataset's recipe starts from it. The same SCF is also started from PySCF's own guesses
(:data:`GUESSES`). With ``N_g`` the cycles from guess ``g`` and ``N_p`` from the prediction, the
QH9 ratios are (QH9 paper; ``divelab/AIRS`` ``test_dft_acceleration.py``):

* optimal ratio ``1 / N_g``: what a perfect prediction would achieve (one cycle);
* achieved ratio ``N_p / N_g`` (lower is better);
* error-level ratio ``n_g / N_g``, where ``n_g`` is the first cycle at which the guess-started
  SCF's Fock matrix is as close to the reference as the prediction is (mean absolute error over
  the full matrix); higher is better: the prediction is worth that fraction of the run.

A cycle is one pass of PySCF's SCF loop (Fock build + diagonalisation), counted by a callback,
so the count equals PySCF's ``mf.cycles`` (QH9's script records the callback's 0-based
``cycle`` index instead, i.e. one less; see docs/scf-acceleration.md). The reference is the label
for dataset molecules and the converged Fock matrix of the prediction-started SCF for molecules
without one.

:func:`commutator_error` is the label-free check of a prediction: the DIIS error
``F D S - S D F`` of the density that ``H`` implies.

This module never imports torch: spawned SCF workers import it (tests/test_floor_plan.py). The
prediction it starts from comes from :mod:`deqh_core.inference.loaded`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deqh_core.ao.orbitals import density
from deqh_core.data.recipe import Recipe
from deqh_core.util.cache import cache_dir
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import atomic_open, atomic_write
from deqh_core.util.parallel import map_unordered
from deqh_core.util.progress import tracked

GUESSES = ("minao", "sap", "huckel")
"""PySCF initial guesses the prediction is compared with by default: on QH9 molecules (B3LYP,
def2-SVP) ``minao`` is PySCF's best start, ahead of ``sap`` and ``huckel`` (docs/pretrained.md);
the paper's Table 3 compares with ``minao`` and ``1e`` (``--guess 1e``)."""


# ----------------------------------------------------------------------------------------------
# densities and the label-free check


def density_from_hamiltonian(
    hamiltonian: np.ndarray, overlap: np.ndarray, n_electrons: int
) -> np.ndarray:
    """Closed-shell aufbau density ``D = 2 C_occ C_occᵀ`` (``[n_ao, n_ao]``) of ``H C = S C
    eps`` (:func:`deqh_core.ao.orbitals.density`; ``H`` symmetrised, ``n_electrons`` even)."""

    return density(hamiltonian, overlap, n_electrons)


@dataclass(frozen=True)
class CommutatorError:
    """DIIS error ``E = F D S - S D F`` of a Hamiltonian ``H``'s density ``D`` (Hartree).

    ``F = F[D]`` is the recipe's Fock matrix of ``D``; ``E = 0`` exactly when ``D`` is
    self-consistent. (With ``F = H`` itself ``E`` vanishes for *any* symmetric ``H``, because
    ``D`` is built from ``H``'s own eigenvectors, so it would say nothing.)

    Attributes:
        frobenius: ``||E||_F``.
        max_abs: ``max |E_ij|`` (PySCF's DIIS and ``conv_tol_grad`` look at this scale).
        fock_change: ``max |F[D] - H|``: how far one Fock build moves ``H``.
    """

    frobenius: float
    max_abs: float
    fock_change: float


def commutator_error(
    hamiltonian: np.ndarray,
    atomic_numbers: Sequence[int],
    positions: np.ndarray,
    recipe: Recipe | None = None,
) -> CommutatorError:
    """Label-free quality of a predicted ``H`` (``[n_ao, n_ao]``, PySCF order, Hartree) for the
    molecule ``(atomic_numbers [n], positions [n, 3] Å)``: the commutator of the recipe's Fock
    matrix of ``H``'s density with that density (see :class:`CommutatorError`). Costs one Fock
    build with the recipe (grid, J/K, XC), about one SCF cycle."""
    recipe = recipe or Recipe()
    mol = _mole(recipe, atomic_numbers, positions)
    h = np.asarray(hamiltonian, dtype=np.float64)
    if h.shape != (mol.nao, mol.nao):
        raise DataError(
            f"H is {h.shape[0]}x{h.shape[1]} but the molecule has {mol.nao} AOs in {recipe.basis}"
        )
    return _commutator(h, recipe.rks(mol))


def _commutator(h: np.ndarray, mf) -> CommutatorError:
    s = mf.get_ovlp()
    d = density_from_hamiltonian(h, s, mf.mol.nelectron)
    f = mf.get_fock(dm=d)
    e = f @ d @ s
    e = e - e.T  # S D F = (F D S)ᵀ for symmetric F, D, S
    return CommutatorError(
        frobenius=float(np.linalg.norm(e)),
        max_abs=float(np.abs(e).max()),
        fock_change=float(np.abs(f - (h + h.T) / 2).max()),
    )


def _mole(recipe: Recipe, atomic_numbers, positions):
    if recipe.spin != 0:
        raise DataError(f"spin={recipe.spin}: only closed-shell (spin=0) SCF is supported")
    try:
        return recipe.mole(atomic_numbers, positions)
    except RuntimeError as err:
        raise DataError(f"PySCF cannot build the molecule ({err})") from None


# ----------------------------------------------------------------------------------------------
# one SCF run


@dataclass
class SCFRun:
    """One SCF run from one start.

    Attributes:
        start: ``"prediction"``, ``"minao"`` or ``"1e"``.
        converged: PySCF's verdict.
        cycles: SCF cycles run (callback calls; equals PySCF's ``mf.cycles``).
        energy: final total energy, Hartree.
        seconds: wall time of building the start density plus the SCF, on one thread.
        error_cycle: first cycle (1-based) whose Fock matrix has a mean absolute error against
            the reference ``<=`` the error level; None if never (or without a reference).
        mae_trace: that error at every cycle, Hartree (empty without a reference).
        error: what went wrong if the run could not be made (then ``converged`` is False).
    """

    start: str
    converged: bool
    cycles: int
    energy: float
    seconds: float
    error_cycle: int | None = None
    mae_trace: list[float] = field(default_factory=list)
    error: str | None = None


def run_scf(
    recipe: Recipe,
    mol,
    start: str | np.ndarray | Callable[[Any], np.ndarray],
    reference: np.ndarray | None = None,
    error_level: float | None = None,
) -> tuple[SCFRun, np.ndarray | None]:
    """Run the recipe's RKS on ``mol`` from ``start``: a PySCF guess name (``"minao"``, ``"1e"``,
    ...), a Hamiltonian ``[n_ao, n_ao]`` (PySCF order, Hartree) whose density starts the run,
    or a function of the run's own mean-field object that returns such a Hamiltonian (a
    model's guess made with the SCF's grid and integrals; its time is the run's).

    With a ``reference`` matrix every cycle's Fock matrix (the one PySCF rebuilds from the new
    density, before DIIS) is compared with it; ``error_level`` (Hartree) sets
    :attr:`SCFRun.error_cycle`. Returns the run and the converged Fock matrix (None if the SCF
    could not start).
    """
    name = start if isinstance(start, str) else "prediction"
    mf = recipe.rks(mol)
    run = SCFRun(start=name, converged=False, cycles=0, energy=math.nan, seconds=0.0)

    def count(envs: dict[str, Any]) -> None:
        run.cycles += 1
        if reference is not None:
            run.mae_trace.append(float(np.abs(envs["fock"] - reference).mean()))

    mf.callback = count
    t0 = time.perf_counter()
    try:
        if isinstance(start, str):
            dm0 = mf.get_init_guess(key=start)
        else:
            h = start(mf) if callable(start) else start
            dm0 = density_from_hamiltonian(h, mf.get_ovlp(), mol.nelectron)
        mf.kernel(dm0=dm0)
    except (MemoryError, DeqhError):  # out of memory, or a molecule the model refuses
        raise
    except Exception as err:  # a singular overlap, a NaN prediction, ...
        run.seconds = time.perf_counter() - t0
        run.error = f"{type(err).__name__}: {err}"
        return run, None
    run.seconds = time.perf_counter() - t0
    run.converged, run.energy = bool(mf.converged), float(mf.e_tot)
    run.error_cycle = _error_cycle(run.mae_trace, error_level)
    return run, np.asarray(mf.get_fock(), dtype=np.float64)  # no DIIS, at the final density


def _error_cycle(trace: Sequence[float], level: float | None) -> int | None:
    """First cycle (1-based) whose error in ``trace`` is ``<= level``; None if never."""
    if level is None or not math.isfinite(level):
        return None
    return next((k + 1 for k, mae in enumerate(trace) if mae <= level), None)


# ----------------------------------------------------------------------------------------------
# one molecule


Start = Callable[[Any], tuple[np.ndarray, float, float]]
"""A model's guess made with the SCF's own mean-field object ``mf``: ``start(mf) -> (H
[n_ao, n_ao] PySCF order Hartree, model seconds, H0 seconds)``
(:meth:`deqh_core.inference.guess.ModelGuess.hamiltonian`)."""


@dataclass
class SCFTask:
    """One molecule to test: geometry, predicted ``H`` and (optionally) its label.

    ``prediction`` and ``label`` are ``[n_ao, n_ao]`` in PySCF AO order, Hartree;
    ``predict_seconds`` is the model's inference time for this molecule, ``prior_seconds`` the
    time PySCF took to build the prior ``H0`` the model read (0 without a prior).

    With ``start`` instead of a ``prediction``, the prediction is made inside the timed
    prediction-started run, with that run's mean-field object (the wall time a user of
    :func:`deqh_core.pyscf.init_guess` sees: ``H0``, model and SCF on one clock), in the calling
    process (:func:`predicted_run`, which fills ``prediction``, the seconds and
    ``prediction_run``).
    """

    name: str
    atomic_numbers: np.ndarray  # [n_atoms]
    positions: np.ndarray  # [n_atoms, 3], Å
    prediction: np.ndarray | None = None
    label: np.ndarray | None = None
    predict_seconds: float = 0.0
    prior_seconds: float = 0.0
    start: Start | None = None
    prediction_run: SCFRun | None = None
    prediction_fock: np.ndarray | None = None  # that run's converged Fock matrix


@dataclass
class MoleculeSCF:
    """Result for one molecule: the prediction-started run and one run per guess.

    Attributes:
        reference: ``"label"`` or ``"scf"`` (the prediction-started SCF's converged Fock matrix).
        h_mae: mean absolute error of the prediction against the reference (the error level).
        label_mae: the converged Fock matrix against the label (how well the recipe reproduces
            the labels; ~0 when they were made with it). None without a label.
    """

    name: str
    n_atoms: int
    n_ao: int
    reference: str
    h_mae: float
    label_mae: float | None
    commutator: CommutatorError | None
    predict_seconds: float
    prediction: SCFRun
    guesses: dict[str, SCFRun]
    prior_seconds: float = 0.0
    in_run: bool = False  # H0 and the model were timed inside the prediction-started run

    def optimal_ratio(self, guess: str) -> float:
        return _ratio(1, self.guesses[guess])

    def achieved_ratio(self, guess: str) -> float:
        if self.prediction.error is not None:
            return math.nan
        return _ratio(self.prediction.cycles, self.guesses[guess])

    def error_level_ratio(self, guess: str) -> float:
        run = self.guesses[guess]
        return math.nan if run.error_cycle is None else _ratio(run.error_cycle, run)

    @property
    def total_seconds(self) -> float:
        """Wall time of the prediction-started SCF, model inference and the prior ``H0``
        included (the cost to set against a guess-started run's :attr:`SCFRun.seconds`)."""
        cost = self.prediction.seconds
        if not self.in_run:
            cost += self.predict_seconds + self.prior_seconds
        return cost

    def time_saved(self, guess: str) -> float:
        """Seconds saved against ``guess``, model inference and the prior ``H0`` included."""
        return self.guesses[guess].seconds - self.total_seconds

    def energy_difference(self, guess: str) -> float:
        """``|E(prediction) - E(guess)|``, Hartree; NaN unless both converged."""
        run = self.guesses[guess]
        if not (run.converged and self.prediction.converged):
            return math.nan
        return abs(self.prediction.energy - run.energy)

    def row(self) -> dict[str, Any]:
        """Flat CSV row."""
        c = self.commutator
        p = self.prediction
        row: dict[str, Any] = {
            "name": self.name,
            "n_atoms": self.n_atoms,
            "n_ao": self.n_ao,
            "reference": self.reference,
            "h_mae": self.h_mae,
            "label_mae": self.label_mae,
            "commutator_fro": c.frobenius if c else None,
            "commutator_max": c.max_abs if c else None,
            "predict_s": self.predict_seconds,
            "prior_s": self.prior_seconds,
            "pred_cycles": p.cycles,
            "pred_converged": p.converged,
            "pred_energy": p.energy,
            "pred_s": p.seconds,
            "total_s": self.total_seconds,
            "in_run": self.in_run,
            "pred_error": p.error,
        }
        for g, run in self.guesses.items():
            row |= {
                f"{g}_cycles": run.cycles,
                f"{g}_converged": run.converged,
                f"{g}_energy": run.energy,
                f"{g}_s": run.seconds,
                f"{g}_error_cycle": run.error_cycle,
                f"{g}_optimal_ratio": self.optimal_ratio(g),
                f"{g}_achieved_ratio": self.achieved_ratio(g),
                f"{g}_error_level_ratio": self.error_level_ratio(g),
                f"{g}_time_saved_s": self.time_saved(g),
                f"{g}_energy_diff": self.energy_difference(g),
            }
        return row


def _ratio(cycles: int, run: SCFRun) -> float:
    return cycles / run.cycles if run.cycles and run.error is None else math.nan


def accelerate(
    task: SCFTask,
    recipe: Recipe | None = None,
    guesses: Sequence[str] = GUESSES,
    commutator: bool = True,
    guess_cache: bool = True,
) -> MoleculeSCF:
    """All SCF runs of one molecule: from the prediction, then from each guess.

    The reference is ``task.label`` when given, else the prediction-started run's converged
    Fock matrix; the error level is the prediction's mean absolute error against it (over the
    full matrix, Hartree). ``commutator=False`` skips :func:`commutator_error` (one Fock build).
    With a label, the guess runs do not depend on the model: ``guess_cache`` reuses them
    (:func:`cached_guess_run`).
    """
    recipe = recipe or Recipe()
    mol = _mole(recipe, task.atomic_numbers, task.positions)
    if task.start is not None:
        task = predicted_run(task, recipe, mol)
    pred = np.asarray(task.prediction, dtype=np.float64)
    if pred.shape != (mol.nao, mol.nao):
        raise DataError(
            f"{task.name}: prediction is {pred.shape[0]}x{pred.shape[1]} but the molecule has "
            f"{mol.nao} AOs in {recipe.basis}"
        )
    comm = None
    if commutator and np.isfinite(pred).all():
        comm = _commutator(pred, recipe.rks(mol))
    if task.prediction_run is not None:
        p_run, p_fock = task.prediction_run, task.prediction_fock
    elif task.label is not None:
        p_run, p_fock = run_scf(recipe, mol, pred, task.label)
    else:
        p_run, p_fock = run_scf(recipe, mol, pred)
    if task.label is not None:
        reference = np.asarray(task.label, dtype=np.float64)
    else:
        reference = p_fock if p_run.converged else None
    level = float(np.abs(pred - reference).mean()) if reference is not None else math.nan
    p_run.error_cycle = _error_cycle(p_run.mae_trace, level)
    if task.label is not None and guess_cache:
        runs = {g: cached_guess_run(recipe, mol, g, reference, level) for g in guesses}
    else:
        runs = {g: run_scf(recipe, mol, g, reference, level)[0] for g in guesses}
    label_mae = None
    if task.label is not None and p_fock is not None:
        label_mae = float(np.abs(p_fock - task.label).mean())
    return MoleculeSCF(
        name=task.name,
        n_atoms=len(task.atomic_numbers),
        n_ao=int(mol.nao),
        reference="label" if task.label is not None else "scf",
        h_mae=level,
        label_mae=label_mae,
        commutator=comm,
        predict_seconds=task.predict_seconds,
        prediction=p_run,
        guesses=runs,
        prior_seconds=task.prior_seconds,
        in_run=task.prediction_run is not None,
    )


def predicted_run(task: SCFTask, recipe: Recipe | None = None, mol=None) -> SCFTask:
    """The task with its prediction-started SCF run: the prediction made by ``task.start``
    with the run's own mean-field object, inside the timed run, in this process (a model
    cannot go to a spawned SCF worker). Returns a copy with ``prediction``, its seconds,
    ``prediction_run`` (whose time includes the model's and ``H0``'s) and ``prediction_fock``,
    and no ``start``; a task without ``start`` is returned as it is."""
    if task.start is None:
        return task
    recipe = recipe or Recipe()
    mol = mol if mol is not None else _mole(recipe, task.atomic_numbers, task.positions)
    made: dict[str, Any] = {}

    def start(mf) -> np.ndarray:
        made["h"], made["model_s"], made["prior_s"] = task.start(mf)
        return made["h"]

    run, fock = run_scf(recipe, mol, start, task.label)
    if "h" not in made:  # the run failed before the model had predicted
        raise DeqhError(f"{task.name}: the prediction-started SCF failed: {run.error}")
    return replace(
        task,
        start=None,
        prediction=made["h"],
        predict_seconds=made["model_s"],
        prior_seconds=made["prior_s"],
        prediction_run=run,
        prediction_fock=fock,
    )


def cached_guess_run(
    recipe: Recipe, mol, guess: str, reference: np.ndarray, error_level: float
) -> SCFRun:
    """:func:`run_scf` from a PySCF guess against a label ``reference``, computed once and kept
    under :func:`deqh_core.util.cache.cache_dir` (``scf/``): such a run depends only on the recipe,
    the molecule and the label, not on the model being tested, so comparing several models on
    the same molecules runs it once. Its error cycle for ``error_level`` is read off the stored
    error trace. The stored wall time is that of the run that made it."""

    key = hashlib.sha256()
    key.update(json.dumps([1, guess, recipe.model_dump()], sort_keys=True).encode())
    key.update(np.ascontiguousarray(mol.atom_charges(), dtype="<i8").tobytes())
    key.update(np.ascontiguousarray(mol.atom_coords(), dtype="<f8").tobytes())
    key.update(np.ascontiguousarray(reference, dtype="<f8").tobytes())
    path = cache_dir() / "scf" / f"{key.hexdigest()[:32]}.json"
    try:
        run = SCFRun(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        run = run_scf(recipe, mol, guess, reference)[0]
        try:
            atomic_write(path, json.dumps(_jsonable(asdict(run))))
        except OSError:  # a read-only cache must not stop the test
            pass
    run.error_cycle = _error_cycle(run.mae_trace, error_level)
    return run


# ----------------------------------------------------------------------------------------------
# many molecules


def run_acceleration(
    tasks: Sequence[SCFTask],
    recipe: Recipe | None = None,
    guesses: Sequence[str] = GUESSES,
    workers: int = 1,
    progress: bool = True,
    commutator: bool = True,
    guess_cache: bool = True,
) -> list[MoleculeSCF]:
    """:func:`accelerate` every task, ``workers`` processes in parallel (one thread each, so
    timings are comparable); results in task order. Tasks with a ``start`` first run their
    prediction-started SCF here, one after another (:func:`predicted_run`)."""
    recipe = recipe or Recipe()
    if workers < 1:
        raise DeqhError(f"workers must be >= 1, got {workers}")
    if any(t.start is not None for t in tasks):  # the model runs here, PySCF on one thread
        made = []
        with tracked("SCF from the model", len(tasks), progress) as advance:
            for task in map_unordered(predicted_run, ((t, recipe) for t in tasks), 1):
                made.append(task)  # in order: one worker runs in this process
                advance()
        tasks = made
    results: list[MoleculeSCF | None] = [None] * len(tasks)
    with tracked("SCF from prediction and guesses", len(tasks), progress) as advance:
        jobs = _results(tasks, recipe, tuple(guesses), workers, commutator, guess_cache)
        for index, result in jobs:
            results[index] = result
            advance()
    return [r for r in results if r is not None]


def _indexed(index: int, *args) -> tuple[int, MoleculeSCF]:
    return index, accelerate(*args)


def _results(
    tasks, recipe, guesses, workers, commutator, guess_cache
) -> Iterator[tuple[int, MoleculeSCF]]:
    jobs = ((i, task, recipe, guesses, commutator, guess_cache) for i, task in enumerate(tasks))
    return map_unordered(_indexed, jobs, workers)


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std()), "n": len(x)}


def summarize(results: Sequence[MoleculeSCF]) -> dict[str, Any]:
    """Mean, standard deviation (population, as QH9 reports) and count of every ratio per guess,
    plus the prediction's error, the commutator, convergence and the largest energy
    difference. NaN entries (an undefined error-level ratio, a failed run) are left out of the
    statistics and show as a smaller ``n``. JSON-serialisable."""
    if not results:
        raise DeqhError("no molecules to summarise")
    guesses = list(results[0].guesses)
    out: dict[str, Any] = {
        "molecules": len(results),
        "reference": sorted({r.reference for r in results}),
        "h_mae": _stats([r.h_mae for r in results]),
        "commutator_max": _stats([r.commutator.max_abs for r in results if r.commutator]),
        "commutator_fro": _stats([r.commutator.frobenius for r in results if r.commutator]),
        "predict_s": _stats([r.predict_seconds for r in results]),
        "prior_s": _stats([r.prior_seconds for r in results]),
        "prediction": {
            "cycles": _stats([r.prediction.cycles for r in results]),
            "converged": sum(r.prediction.converged for r in results),
            "seconds": _stats([r.prediction.seconds for r in results]),
            "total_s": _stats([r.total_seconds for r in results]),
            "in_run": all(r.in_run for r in results),
        },
        "guesses": {},
    }
    energy_diffs = []
    for g in guesses:
        diffs = [r.energy_difference(g) for r in results]
        energy_diffs += diffs
        out["guesses"][g] = {
            "cycles": _stats([r.guesses[g].cycles for r in results]),
            "converged": sum(r.guesses[g].converged for r in results),
            "seconds": _stats([r.guesses[g].seconds for r in results]),
            "optimal_ratio": _stats([r.optimal_ratio(g) for r in results]),
            "achieved_ratio": _stats([r.achieved_ratio(g) for r in results]),
            "error_level_ratio": _stats([r.error_level_ratio(g) for r in results]),
            "time_saved_s": _stats([r.time_saved(g) for r in results]),
            "energy_diff_max": _nanmax(diffs),
        }
    out["energy_diff_max"] = _nanmax(energy_diffs)
    return out


def _nanmax(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.max()) if len(x) else math.nan


def _pm(stat: dict, digits: int = 3) -> str:
    if not stat["n"]:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(summary: dict[str, Any], model: str = "model") -> str:
    """The summary as a Markdown table shaped like the paper's Table 3 (one model column)."""
    lines = [
        f"| DFT initialization | Metric | {model} |",
        "|---|---|---|",
    ]
    n = summary["molecules"]
    for g, s in summary["guesses"].items():
        rows = [
            ("Optimal ratio", _pm(s["optimal_ratio"])),
            ("Achieved ratio ↓", _pm(s["achieved_ratio"])),
            ("Error-level ratio ↑", _pm(s["error_level_ratio"])),
            ("SCF cycles from guess", _pm(s["cycles"], 1)),
            ("Wall time (guess + SCF), s", _pm(s["seconds"], 2)),
            ("Wall time saved, s", _pm(s["time_saved_s"], 2)),
        ]
        if s["error_level_ratio"]["n"] < n:
            rows[2] = (rows[2][0], f"{rows[2][1]} (defined for {s['error_level_ratio']['n']}/{n})")
        for k, (metric, value) in enumerate(rows):
            lines.append(f"| {g if k == 0 else ''} | {metric} | {value} |")
    p = summary["prediction"]
    lines += [
        f"| prediction | SCF cycles | {_pm(p['cycles'], 1)} |",
        f"| | Wall time (H0 + model + SCF), s | {_pm(p['total_s'], 2)} |",
        f"| | of which model inference, s | {_pm(summary['predict_s'], 3)} |",
    ]
    if summary["prior_s"]["n"] and summary["prior_s"]["mean"] > 0:
        lines.append(f"| | of which prior H0, s | {_pm(summary['prior_s'], 3)} |")
    lines += [
        f"| | H MAE, 1e-6 Ha | {_scaled(summary['h_mae'], 1e6)} |",
        f"| | commutator max, Ha | {_sci(summary['commutator_max'])} |",
        f"| | max \\|ΔE\\| vs guesses, Ha | {summary['energy_diff_max']:.1e} |",
    ]
    caption = (
        f"\n{n} molecules; mean ± std; reference for the error level: "
        f"{', '.join(summary['reference'])}.\n"
    )
    return "\n".join(lines) + caption


def markdown_by_size(results: Sequence[MoleculeSCF]) -> str:
    """Mean SCF cycles and total wall time (s) of every start, per molecule size (atoms): the
    model's time counts ``H0`` and inference, a guess's its own setup."""
    guesses = list(results[0].guesses) if results else []
    starts = ["model", *guesses]
    head = " | ".join(f"{g} cycles" for g in starts) + " | " + " | ".join(f"{g} s" for g in starts)
    lines = [f"| atoms | molecules | {head} |", "|---" * (2 + 2 * len(starts)) + "|"]
    for n in sorted({r.n_atoms for r in results}):
        group = [r for r in results if r.n_atoms == n]
        cycles = [[r.prediction.cycles for r in group]]
        seconds = [[r.total_seconds for r in group]]
        cycles += [[r.guesses[g].cycles for r in group] for g in guesses]
        seconds += [[r.guesses[g].seconds for r in group] for g in guesses]
        cells = [f"{np.mean(c):.1f}" for c in cycles] + [f"{np.mean(t):.2f}" for t in seconds]
        lines.append(f"| {n} | {len(group)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _sci(stat: dict) -> str:
    return f"{stat['mean']:.1e} ± {stat['std']:.1e}" if stat["n"] else "n/a"


def _scaled(stat: dict, factor: float) -> str:
    if not stat["n"]:
        return "n/a"
    return f"{stat['mean'] * factor:.1f} ± {stat['std'] * factor:.1f}"


def write_report(
    results: Sequence[MoleculeSCF], out: str | Path, model: str = "model"
) -> dict[str, Path]:
    """Write ``scf.csv`` (one row per molecule), ``scf_summary.json`` and ``scf_table.md`` into
    ``out``; returns their paths and the summary under ``"summary"``."""
    out = Path(out)
    rows = [r.row() for r in results]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    paths = {"csv": out / "scf.csv", "json": out / "scf_summary.json", "md": out / "scf_table.md"}
    with atomic_open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(results)
    molecules = [
        {**asdict(r), "commutator": asdict(r.commutator) if r.commutator else None} for r in results
    ]
    payload = {"model": model, "summary": summary, "molecules": molecules}
    atomic_write(paths["json"], json.dumps(_jsonable(payload), indent=1) + "\n")
    by_size = "\nBy molecule size (means):\n\n" + markdown_by_size(results)
    atomic_write(paths["md"], markdown_table(summary, model) + by_size)
    return paths | {"summary": summary}


def _jsonable(value):
    """NaN/inf -> None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
