"""Write QH9-stable and QH9-dynamic files the way QH9's own generation scripts do.

divelab/AIRS, ``OpenDFT/QHBench/QH9/dataset_generation_examples/QH9_stable.py`` and
``QH9_dynamic.py`` write through apsw (not the sqlite3 module):

* QH9-stable: ``data(id INTEGER NOT NULL PRIMARY KEY, N INTEGER, Z BLOB, pos BLOB, Ham BLOB)``;
  ``id`` a Python int (the QH9-stable id), ``Z`` the int32 atomic numbers, ``pos`` float64 Å,
  ``Ham`` the float64 Fock matrix (PySCF AO order, Hartree), arrays bound as memoryviews.
* QH9-dynamic: ``data(id INTEGER NOT NULL, geo_id INTEGER NOT NULL, N INTEGER, Z BLOB, pos BLOB,
  ekin FLOAT, epot FLOAT, etot FLOAT, time FLOAT, Ham BLOB, converged INT)``, one row per MD
  frame. ``id`` is the molecule's index drawn by ``numpy.random.Generator.choice``, a numpy
  int64, which apsw binds through the buffer protocol: SQLite stores it as an 8-byte blob (QH9's
  loader decodes it with ``np.frombuffer(row[0], np.int64)``). ``pos`` is PySCF's
  ``mol.atom_coords()`` (float64, Bohr) bound as the array itself.

Our own code; only the file layout is taken from those scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apsw
import numpy as np

from deqh_core.data.recipe import Recipe


@dataclass
class Label:
    """One geometry labelled with PySCF: Å positions, Fock matrix, overlap and orbital energies."""

    atomic_numbers: np.ndarray
    positions: np.ndarray  # Å
    fock: np.ndarray
    overlap: np.ndarray
    mo_energy: np.ndarray
    e_tot: float
    converged: bool


def pyscf_label(z: np.ndarray, pos: np.ndarray, recipe: Recipe) -> Label:
    mf = recipe.rks(recipe.mole(z, pos))
    mf.kernel()
    return Label(
        np.asarray(z),
        np.asarray(pos),
        mf.get_fock(),
        mf.get_ovlp(),
        mf.mo_energy,
        mf.e_tot,
        mf.converged,
    )


def _blob(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array))


def write_qh9_stable(path, molecules: Sequence[tuple[int, Label]]) -> None:
    """``molecules``: (QH9-stable id, label) pairs, written in one transaction."""
    cursor = apsw.Connection(
        str(path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    ).cursor()
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS data (id INTEGER NOT NULL PRIMARY KEY, N INTEGER, Z BLOB, "
        "pos BLOB, Ham BLOB)"
    )
    cursor.execute("BEGIN")
    for qh9_id, label in molecules:
        cursor.execute(
            "INSERT INTO data (id, N, Z, pos, Ham) VALUES (?,?,?,?,?)",
            (
                int(qh9_id),
                len(label.atomic_numbers),
                _blob(label.atomic_numbers.astype(np.int32)),
                _blob(label.positions.astype(np.float64)),
                _blob(label.fock),
            ),
        )
    cursor.execute("COMMIT")
    cursor.connection.close()


def write_qh9_dynamic(path, trajectories: Sequence[tuple[np.int64, Sequence[Label]]]) -> None:
    """``trajectories``: (molecule id as numpy int64, its frames); one transaction each."""
    cursor = apsw.Connection(
        str(path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    ).cursor()
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS data (id INTEGER NOT NULL, geo_id INTEGER NOT NULL, "
        "N INTEGER, Z BLOB, pos BLOB, ekin FLOAT, epot FLOAT, etot FLOAT, time FLOAT, Ham BLOB, "
        "converged INT)"
    )
    bohr = 0.52917721092  # Å per Bohr, PySCF's value
    for mol_id, frames in trajectories:
        assert isinstance(mol_id, np.int64)
        cursor.execute("BEGIN")
        for geo_id, frame in enumerate(frames):
            ekin = 0.01 * geo_id
            cursor.execute(
                "INSERT INTO data (id, geo_id, N, Z, pos, ekin, epot, etot, time, Ham, converged) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    mol_id,
                    geo_id,
                    len(frame.atomic_numbers),
                    _blob(frame.atomic_numbers.astype(np.int32)),
                    np.ascontiguousarray(frame.positions / bohr),
                    np.float64(ekin),
                    np.float64(frame.e_tot),
                    np.float64(ekin + frame.e_tot),
                    50.0 * geo_id,
                    _blob(frame.fock),
                    int(frame.converged),
                ),
            )
        cursor.execute("COMMIT")
    cursor.connection.close()
