"""``deqh predict``: Hamiltonians, orbital energies and orbitals of new molecules.

Every frame of every xyz file is one molecule. For each, the checkpoint's model predicts ``H``
(PySCF AO order, Hartree, in the checkpoint's basis); the overlap ``S`` comes from PySCF, and
``H C = S C eps`` is solved in float64. Results are saved as one ``.npz`` per molecule:

=========================  ==============  ===============================================
``hamiltonian``            [n_ao, n_ao]    predicted H, PySCF AO order, Hartree
``overlap``                [n_ao, n_ao]    S (PySCF ``int1e_ovlp``)
``orbital_energies``       [n_ao]          ascending, Hartree
``orbital_coefficients``   [n_ao, n_ao]    column ``i`` is orbital ``i`` (``C.T S C = 1``)
``atomic_numbers``         [n_atoms]
``positions``              [n_atoms, 3]    Å
``basis``                  str             PySCF basis name
``n_occ``, ``homo``,       scalars         occupied orbitals (closed shell), Hartree
``lumo``, ``gap``
``deq_nstep``,             scalars         DEQ models only: evaluation of the returned
``deq_residual``                           estimate and its residual ``||f(H)-H||_F`` (Ha)
=========================  ==============  ===============================================

plus ``summary.csv`` (one row per molecule) in the output directory. Python API::

    from deqh_core.inference.predict import predict_files
    predictions = predict_files("runs/cpu-small/best.pt", ["water.xyz"], out_dir="pred")
    predictions[0].hamiltonian, predictions[0].homo
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deqh_core.ao.basis import AOLayout, formula, symbol
from deqh_core.ao.orbitals import occupied_count, solve
from deqh_core.data.domain import MIN_DISTANCE, nearest_neighbours
from deqh_core.data.recipe import Recipe
from deqh_core.data.xyz import Frame, read_xyz
from deqh_core.inference.loaded import LoadedModel, load_model
from deqh_core.inference.scf import CommutatorError, commutator_error
from deqh_core.solvers.protocol import Blocks
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import atomic_open
from deqh_core.util.progress import tracked

HARTREE_EV = 27.211386245988  # CODATA 2018


@dataclass
class Prediction:
    """The prediction for one molecule (one xyz frame); matrices in PySCF AO order."""

    source: str  # xyz file
    frame: int  # 0-based frame index in the file
    comment: str
    atomic_numbers: np.ndarray  # [n_atoms]
    positions: np.ndarray  # [n_atoms, 3] Å
    basis: str
    hamiltonian: np.ndarray  # [n_ao, n_ao] Hartree
    overlap: np.ndarray  # [n_ao, n_ao]
    orbital_energies: np.ndarray  # [n_ao] Hartree, ascending
    orbital_coefficients: np.ndarray  # [n_ao, n_ao], columns are orbitals
    n_occ: int
    deq_nstep: int | None = None
    deq_residual: float | None = None  # Hartree
    deq_converged: bool | None = None  # DEQ models: the residual reached the tolerance
    warnings: list[str] = field(default_factory=list)  # how it lies outside the training domain
    commutator: CommutatorError | None = None  # --check: the label-free error of H
    prior_seconds: float | None = None  # models with a prior: PySCF's time to build H0, s
    npz: Path | None = None  # where it was saved

    @property
    def homo(self) -> float:
        return float(self.orbital_energies[self.n_occ - 1])

    @property
    def lumo(self) -> float:
        e = self.orbital_energies
        return float(e[self.n_occ]) if self.n_occ < len(e) else float("nan")

    @property
    def gap(self) -> float:
        return self.lumo - self.homo

    @property
    def formula(self) -> str:
        return formula(self.atomic_numbers)

    @property
    def name(self) -> str:
        return f"{Path(self.source).name}:{self.frame}"

    @property
    def unconverged(self) -> bool:
        return self.deq_converged is False

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` described in the module doc (atomically)."""
        path = Path(path)
        arrays = {
            "hamiltonian": self.hamiltonian,
            "overlap": self.overlap,
            "orbital_energies": self.orbital_energies,
            "orbital_coefficients": self.orbital_coefficients,
            "atomic_numbers": self.atomic_numbers,
            "positions": self.positions,
            "basis": np.array(self.basis),
            "n_occ": np.array(self.n_occ),
            "homo": np.array(self.homo),
            "lumo": np.array(self.lumo),
            "gap": np.array(self.gap),
            "source": np.array(f"{self.source}:{self.frame}"),
            "warnings": np.array(self.warnings, dtype=str),
        }
        if self.deq_nstep is not None:
            arrays["deq_nstep"] = np.array(self.deq_nstep)
            arrays["deq_residual"] = np.array(self.deq_residual)
            arrays["deq_converged"] = np.array(bool(self.deq_converged))
        if self.commutator is not None:
            arrays["commutator_max"] = np.array(self.commutator.max_abs)
            arrays["commutator_fro"] = np.array(self.commutator.frobenius)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)
        self.npz = path
        return path


def read_inputs(
    paths: list[str | Path],
    layout: AOLayout,
    elements: list[int] | None = None,
    close_ok: bool = False,
) -> list[tuple[Path, int, Frame]]:
    """Every frame of every xyz file, checked before anything runs: every element must be in
    ``elements`` (those the model was trained on; default: the layout's), and no two atoms
    closer than :data:`~deqh_core.data.domain.MIN_DISTANCE` unless ``close_ok``."""
    if not paths:
        raise DataError("no xyz files given")
    twice = [p for p, n in Counter(Path(p).resolve() for p in paths).items() if n > 1]
    if twice:
        raise DataError(f"{twice[0]}: given twice (its predictions would overwrite each other)")
    known = set(layout.elements if elements is None else elements) & set(layout.elements)
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such xyz file")
        for i, frame in enumerate(read_xyz(path)):
            bad = sorted({int(z) for z in frame.atomic_numbers} - known)
            if bad:
                names = ", ".join(f"{symbol(z)} (Z={z})" for z in bad)
                where = "AO layout" if set(bad) - set(layout.elements) else "training data"
                raise DataError(
                    f"{path}: frame {i}: element {names} is not in the checkpoint's {where} "
                    f"({layout.basis}: {' '.join(symbol(z) for z in sorted(known))}); the "
                    "model cannot predict it"
                )
            near = nearest_neighbours(frame.positions)
            if not close_ok and len(near) > 1 and near.min() < MIN_DISTANCE:
                a = int(near.argmin())
                d = np.linalg.norm(np.asarray(frame.positions) - frame.positions[a], axis=1)
                d[a] = np.inf
                b, z = int(d.argmin()), frame.atomic_numbers
                raise DataError(
                    f"{path}: frame {i}: atoms {a} ({symbol(int(z[a]))}) and {b} "
                    f"({symbol(int(z[b]))}) are {d[b]:.3f} Å apart, closer than any bond "
                    f"({MIN_DISTANCE} Å); are the positions in Å? (--keep-going predicts anyway)"
                )
            frames.append((path, i, frame))
    return frames


def occupied_counts(
    frames: list[tuple[Path, int, Frame]], layout: AOLayout, recipe: Recipe
) -> list[int]:
    """Doubly occupied orbitals of every frame under ``recipe`` (its charge; ECPs counted).

    Raises:
        DataError: a frame with an odd electron count (deqh is closed-shell), naming it.
    """
    counts = []
    for path, i, frame in frames:
        z = frame.atomic_numbers
        n_ao = layout.n_ao_table[z].sum()
        try:
            counts.append(occupied_count(z, recipe.basis, recipe.charge, n_ao))
        except DeqhError as err:
            raise DataError(f"{path}: frame {i}: {err}") from None
    return counts


def output_names(frames: list[tuple[Path, int, Frame]]) -> list[str]:
    """``<stem>.npz`` for a one-frame file, ``<stem>_<frame>.npz`` otherwise; unique."""
    per_file = Counter(path for path, _, _ in frames)
    names = [
        f"{path.stem}.npz" if per_file[path] == 1 else f"{path.stem}_{i:04d}.npz"
        for path, i, _ in frames
    ]
    seen: dict[str, Path] = {}
    for name, (path, _, _) in zip(names, frames):
        if seen.get(name, path) != path:
            raise DataError(
                f"{seen[name]} and {path} would both be saved as {name}; rename one of them"
            )
        seen[name] = path
    return names


def predict_frames(
    loaded: LoadedModel,
    frames: list[tuple[Path, int, Frame]],
    batch_size: int = 16,
    charge: int | None = None,
    progress: bool = False,
    recipe: Recipe | None = None,
    check: bool = False,
) -> list[Prediction]:
    """Predictions for ``frames`` (``(file, index, Frame)``) with a loaded model.

    ``recipe``: the labels' recipe (default: :meth:`LoadedModel.recipe`); it starts a
    guess-started DEQ, sets the electron count (ECPs; ``charge`` overrides its charge) and
    builds the Fock matrix of ``check``, the commutator
    (:func:`deqh_core.inference.scf.commutator_error`). Every molecule is checked against the
    training domain (:attr:`Prediction.warnings`); a DEQ's per-molecule convergence is in
    :attr:`Prediction.deq_converged`.
    """
    loaded.report_deq_failures()  # one broken molecule is flagged, not the whole batch lost
    recipe = recipe or loaded.recipe()[0]
    if charge is not None and charge != recipe.charge:
        recipe = recipe.model_copy(update={"charge": int(charge)})
    domain = loaded.domain
    n_occ = occupied_counts(frames, loaded.layout, recipe)
    warnings = [
        [] if domain is None else domain.check(f.atomic_numbers, f.positions, recipe.charge)
        for _, _, f in frames
    ]
    results: list[Prediction] = []
    starts = range(0, len(frames), batch_size)
    prior = loaded.h0_kind is not None
    with tracked("predict", len(starts), progress) as advance:
        for start in starts:
            chunk = frames[start : start + batch_size]
            items, prior_seconds = [], []
            for path, i, frame in chunk:
                try:
                    items.append(loaded.item(frame.atomic_numbers, frame.positions, recipe))
                except DeqhError as err:
                    raise type(err)(f"{path}: frame {i}: {err}") from None
                prior_seconds.append(loaded.prior_seconds)  # the H0 PySCF built: reported
            batch = loaded.batch(items)
            pred, diagnostics = loaded(batch)
            hams = loaded.matrices(pred, batch)
            overlaps = loaded.matrices(Blocks(batch.s_diag, batch.s_off), batch)
            for b, (path, i, frame) in enumerate(chunk):
                h, s = hams[b], overlaps[b]
                finite = bool(np.isfinite(h).all())  # a DEQ that broke down: flagged below
                try:
                    if finite:
                        eps, c = solve(h, s)
                    else:
                        eps, c = np.full(len(h), np.nan), np.full(h.shape, np.nan)
                except DeqhError as err:
                    raise type(err)(f"{path}: frame {i}: {err}") from None
                p = Prediction(
                    source=str(path),
                    frame=i,
                    comment=frame.comment,
                    atomic_numbers=np.asarray(frame.atomic_numbers),
                    positions=np.asarray(frame.positions),
                    basis=loaded.layout.basis,
                    hamiltonian=h,
                    overlap=s,
                    orbital_energies=eps,
                    orbital_coefficients=c,
                    n_occ=n_occ[start + b],
                    warnings=warnings[start + b],
                    prior_seconds=prior_seconds[b] if prior else None,
                )
                if diagnostics is not None:
                    p.deq_nstep = int(diagnostics.nstep[b])
                    p.deq_residual = float(diagnostics.abs_residual[b])
                    p.deq_converged = bool(diagnostics.converged[b]) and finite
                if check and finite:
                    p.commutator = commutator_error(
                        h, frame.atomic_numbers, frame.positions, recipe
                    )
                results.append(p)
            advance()
    return results


def prepare(
    checkpoint: str | Path,
    xyz: list[str | Path],
    device: str = "cpu",
    ema: bool | None = None,
    recipe: list[str] | tuple = (),
    close_ok: bool = False,
):
    """Load the model and read and check the inputs: ``(loaded, recipe, recipe_source,
    frames, output_names)``. Elements the model was not trained on, and atoms closer than
    any bond (unless ``close_ok``), are refused here (:func:`read_inputs`)."""
    loaded = load_model(checkpoint, device, ema)
    labels, source = loaded.recipe(recipe)
    domain = loaded.domain
    elements = domain.elements if domain else None
    frames = read_inputs(list(xyz), loaded.layout, elements, close_ok)
    return loaded, labels, source, frames, output_names(frames)


def predict_files(
    checkpoint: str | Path,
    xyz: list[str | Path],
    out_dir: str | Path | None = "predictions",
    device: str = "cpu",
    batch_size: int = 16,
    charge: int | None = None,
    ema: bool | None = None,
    progress: bool = False,
    recipe: list[str] | tuple = (),
    check: bool = False,
) -> list[Prediction]:
    """Predict every frame of every file in ``xyz``; save ``.npz`` files and ``summary.csv``
    in ``out_dir`` (``None``: save nothing). All inputs are checked before anything runs.

    ``recipe``: overrides of the checkpoint's recipe (``KEY=VALUE`` or files, see
    :func:`deqh_core.data.recipe.override_recipe`); ``charge`` (default: the recipe's) sets the
    electron count only: the model has no charge input. ``check``: compute the commutator
    check of every prediction (one Fock build each).
    """
    loaded, labels, _, frames, names = prepare(checkpoint, xyz, device, ema, recipe)
    predictions = predict_frames(loaded, frames, batch_size, charge, progress, labels, check)
    if out_dir is not None:
        save_predictions(predictions, names, out_dir)
    return predictions


def save_predictions(predictions: list[Prediction], names: list[str], out_dir: str | Path) -> Path:
    """One ``.npz`` per prediction and ``summary.csv`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for prediction, name in zip(predictions, names):
        prediction.save(out / name)
    return write_summary(predictions, out / "summary.csv")


SUMMARY_FIELDS = (
    "source",
    "frame",
    "formula",
    "n_atoms",
    "n_ao",
    "n_occ",
    "homo_hartree",
    "lumo_hartree",
    "gap_ev",
    "deq_nstep",
    "deq_residual",
    "deq_converged",
    "commutator_max",
    "prior_s",
    "warnings",
    "npz",
)


def summary_row(p: Prediction) -> dict:
    return {
        "source": p.source,
        "frame": p.frame,
        "formula": p.formula,
        "n_atoms": len(p.atomic_numbers),
        "n_ao": len(p.orbital_energies),
        "n_occ": p.n_occ,
        "homo_hartree": p.homo,
        "lumo_hartree": p.lumo,
        "gap_ev": p.gap * HARTREE_EV,
        "deq_nstep": "" if p.deq_nstep is None else p.deq_nstep,
        "deq_residual": "" if p.deq_residual is None else p.deq_residual,
        "deq_converged": "" if p.deq_converged is None else p.deq_converged,
        "commutator_max": "" if p.commutator is None else p.commutator.max_abs,
        "prior_s": "" if p.prior_seconds is None else p.prior_seconds,
        "warnings": "; ".join(p.warnings),
        "npz": "" if p.npz is None else p.npz.name,
    }


def write_summary(predictions: list[Prediction], path: Path) -> Path:
    """``summary.csv``: one :func:`summary_row` per prediction (atomically)."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summary_row(p) for p in predictions)
    return Path(path)
