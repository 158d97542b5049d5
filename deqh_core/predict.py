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

    from deqh_core.predict import predict_files
    predictions = predict_files("runs/cpu-small/best.pt", ["water.xyz"], out_dir="pred")
    predictions[0].hamiltonian, predictions[0].homo
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from deqh_core.cli_options import DeviceOption, EmaOption, ProgressOption
from deqh_core.errors import DataError, DeqhError

if TYPE_CHECKING:
    import torch

    from deqh_core.basis import AOLayout
    from deqh_core.data.xyz import Frame
    from deqh_core.evaluate import LoadedModel

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
        }
        if self.deq_nstep is not None:
            arrays["deq_nstep"] = np.array(self.deq_nstep)
            arrays["deq_residual"] = np.array(self.deq_residual)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        self.npz = path
        return path


def formula(atomic_numbers) -> str:
    """Hill formula, e.g. ``C2H6O``."""
    from deqh_core.basis import symbol

    counts = Counter(symbol(int(z)) for z in atomic_numbers)
    order = sorted(counts)
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + [k for k in order if k not in "CH"]
    return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in order)


def structure_item(
    atomic_numbers: np.ndarray,
    positions: np.ndarray,
    layout: AOLayout,
    dtype: torch.dtype | None = None,
):
    """The PyG item of an unlabelled molecule: the fields of
    :func:`deqh_core.data.dataset.molecule_data` without ``h_diag``/``h_off``; ``S`` from
    PySCF in ``layout.basis`` (positions ``[n_atoms, 3]`` in Å)."""
    import torch
    from torch_geometric.data import Data

    from deqh_core.basis import mole
    from deqh_core.blocks import all_pairs, block_tables, split

    dtype = dtype or torch.float64
    z = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
    slot_ao, slot_sign, n_ao = block_tables(layout, z)
    overlap = mole(z.tolist(), positions, layout.basis).intor("int1e_ovlp")
    data = Data(
        z=z,
        pos=torch.as_tensor(np.asarray(positions), dtype=dtype),
        slot_ao=slot_ao,
        slot_sign=slot_sign,
        n_ao=torch.tensor([n_ao]),
        pair_index=all_pairs(len(z)),
        num_nodes=len(z),
    )
    data.s_diag, data.s_off = split(torch.as_tensor(overlap, dtype=dtype).reshape(-1), data)
    return data


def read_inputs(paths: list[str | Path], layout: AOLayout) -> list[tuple[Path, int, Frame]]:
    """Every frame of every xyz file, checked against the layout before anything runs."""
    from deqh_core.basis import symbol
    from deqh_core.data.xyz import read_xyz

    if not paths:
        raise DataError("no xyz files given")
    known = set(layout.elements)
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such xyz file")
        for i, frame in enumerate(read_xyz(path)):
            bad = sorted({int(z) for z in frame.atomic_numbers} - known)
            if bad:
                names = ", ".join(f"{symbol(z)} (Z={z})" for z in bad)
                raise DataError(
                    f"{path}: frame {i}: element {names} is not in the checkpoint's AO layout "
                    f"({layout.basis}: {' '.join(symbol(z) for z in layout.elements)}); the "
                    "model cannot predict it"
                )
            frames.append((path, i, frame))
    return frames


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
    charge: int = 0,
    progress: bool = False,
) -> list[Prediction]:
    """Predictions for ``frames`` (``(file, index, Frame)``) with a loaded model."""
    import torch
    from torch_geometric.loader import DataLoader

    from deqh_core.blocks import assemble, unflatten
    from deqh_core.data.check import orbital_energies
    from deqh_core.device import to_device
    from deqh_core.evaluate import initial_guess_transform, run_recipe
    from deqh_core.metrics import n_occupied
    from deqh_core.progress import tracked

    transform = initial_guess_transform(loaded, {**run_recipe(loaded), "charge": charge})
    n_occ = []
    for path, i, frame in frames:
        try:
            n_occ.append(n_occupied(frame.atomic_numbers, charge))
        except DeqhError as err:
            raise DataError(f"{path}: frame {i}: {err}") from None
    results: list[Prediction] = []
    starts = range(0, len(frames), batch_size)
    with torch.no_grad(), tracked("predict", len(starts), progress) as advance:
        for start in starts:
            chunk = frames[start : start + batch_size]
            items = []
            for _, _, frame in chunk:
                item = structure_item(frame.atomic_numbers, frame.positions, loaded.layout)
                items.append(transform(item) if transform is not None else item)
            batch = next(iter(DataLoader(items, batch_size=len(items))))
            batch = to_device(batch, loaded.device, loaded.dtype)
            pred, diagnostics = loaded.model(batch)
            flat = assemble(pred.diag.double(), pred.off.double(), batch)
            flat_s = assemble(batch.s_diag.double(), batch.s_off.double(), batch)
            hams = unflatten(flat, batch.n_ao)
            overlaps = unflatten(flat_s, batch.n_ao)
            for b, (path, i, frame) in enumerate(chunk):
                h = hams[b].cpu().numpy()
                h = (h + h.T) / 2
                s = overlaps[b].cpu().numpy()
                eps, c = orbital_energies(h, s)
                results.append(
                    Prediction(
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
                        deq_nstep=None if diagnostics is None else int(diagnostics.nstep[b]),
                        deq_residual=(
                            None if diagnostics is None else float(diagnostics.abs_residual[b])
                        ),
                    )
                )
            advance()
    return results


def predict_files(
    checkpoint: str | Path,
    xyz: list[str | Path],
    out_dir: str | Path | None = "predictions",
    device: str = "cpu",
    batch_size: int = 16,
    charge: int = 0,
    ema: bool | None = None,
    progress: bool = False,
) -> list[Prediction]:
    """Predict every frame of every file in ``xyz``; save ``.npz`` files and ``summary.csv``
    in ``out_dir`` (``None``: save nothing). All inputs are checked before anything runs."""
    from deqh_core.evaluate import load_model

    loaded = load_model(checkpoint, device, ema)
    frames = read_inputs(list(xyz), loaded.layout)
    names = output_names(frames)
    predictions = predict_frames(loaded, frames, batch_size, charge, progress)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for prediction, name in zip(predictions, names):
            prediction.save(out / name)
        write_summary(predictions, out / "summary.csv")
    return predictions


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
        "npz": "" if p.npz is None else p.npz.name,
    }


def write_summary(predictions: list[Prediction], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(summary_row(p) for p in predictions)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)
    return path


def summary_table(predictions: list[Prediction], title: str, limit: int = 30):
    from rich.table import Table

    table = Table(title=title)
    for column in ("molecule", "formula", "atoms", "AOs", "HOMO, Ha", "LUMO, Ha", "gap, eV"):
        table.add_column(column, justify="left" if column in ("molecule", "formula") else "right")
    deq = any(p.deq_nstep is not None for p in predictions)
    if deq:
        table.add_column("DEQ nstep", justify="right")
        table.add_column("residual, Ha", justify="right")
    for p in predictions[:limit]:
        row = [
            f"{Path(p.source).name}:{p.frame}",
            p.formula,
            str(len(p.atomic_numbers)),
            str(len(p.orbital_energies)),
            f"{p.homo:.4f}",
            f"{p.lumo:.4f}",
            f"{p.gap * HARTREE_EV:.3f}",
        ]
        if deq:
            row += [str(p.deq_nstep), f"{p.deq_residual:.1e}"]
        table.add_row(*row)
    if len(predictions) > limit:
        table.caption = f"... and {len(predictions) - limit} more (see summary.csv)"
    return table


def predict_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint of deqh train (best.pt or last.pt).", dir_okay=False)
    ],
    xyz: Annotated[
        list[Path],
        typer.Argument(help="xyz files; every frame is a molecule (Å).", dir_okay=False),
    ],
    out: Annotated[
        Path, typer.Option(help="Directory for the .npz files and summary.csv.", file_okay=False)
    ] = Path("predictions"),
    charge: Annotated[int, typer.Option(help="Molecular charge (closed shell), e.")] = 0,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Molecules per batch.")] = 16,
    ema: EmaOption = None,
    progress: ProgressOption = True,
) -> None:
    """Predict H (PySCF AO order), orbital energies and HOMO/LUMO for new molecules."""
    from rich.console import Console
    from rich.markup import escape

    predictions = predict_files(
        checkpoint, xyz, out, device, batch_size, charge, ema=ema, progress=progress
    )
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(summary_table(predictions, f"deqh predict: {escape(str(checkpoint))}"))
    console.print(
        f"{len(predictions)} molecule(s): .npz files and summary.csv in {out}/", markup=False
    )
