"""Reader of SchNOrb's MD17 Hamiltonian files, and :func:`open_source` to open any data file.

SchNOrb ships its MD17 Hamiltonians (water, ethanol, malondialdehyde, uracil) as ASE SQLite
databases: every row has ``numbers``, ``positions`` (Å) and ``row.data["hamiltonian"]`` /
``row.data["overlap"]``, ``[n_ao, n_ao]`` in ORCA's AO order, Hartree. :class:`MD17Reader`
offers the reading interface of :class:`~deqh_core.data.store.HamiltonianDB` and converts every
matrix to PySCF order, so nothing downstream ever sees ORCA order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.db import connect

from deqh_core.ao.basis import AOLayout, symbol
from deqh_core.ao.convention import convert
from deqh_core.data.store import HamiltonianDB, MoleculeInfo, MoleculeRecord
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import not_found

_SQLITE_MAGIC = b"SQLite format 3\x00"
# What reading an ASE database can raise on a damaged file or row (besides our own errors).
_READ_ERRORS = (sqlite3.Error, OSError, ValueError, TypeError, KeyError)


def _sqlite_schema(path: Path) -> dict[str, list[str]] | None:
    """``{table: [column, ...]}`` of an SQLite file, read without touching it; None if the
    file is not SQLite."""
    with open(path, "rb") as fh:
        if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            quoted = {t: '"' + t.replace('"', '""') + '"' for t in names}
            return {
                t: [c[1] for c in con.execute(f"PRAGMA table_info({quoted[t]})")] for t in names
            }
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise DataError(f"{path}: damaged SQLite file ({err})") from None


def _table_list(schema: dict[str, list[str]]) -> str:
    return ", ".join(sorted(schema)) or "none"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(not_found(path, "file"))


class MD17Reader:
    """Read-only view of a SchNOrb MD17 ASE database, matrices in PySCF order.

    Args:
        path: the ``.db`` file.
        basis: the basis set the matrices were computed in (SchNOrb MD17: def2-SVP); used to
            check sizes and to convert from ORCA to PySCF order.

    Ids are ASE's row ids (1-based).
    """

    def __init__(self, path: str | Path, basis: str = "def2-svp"):

        self.path = Path(path)
        self.basis = basis
        _check_file(self.path)
        schema = _sqlite_schema(self.path)
        if schema is None:
            raise DataError(f"{self.path}: not an SQLite file, so not an ASE database")
        if "systems" not in schema:
            raise DataError(
                f"{self.path}: not an ASE database (no table 'systems'; tables: "
                f"{_table_list(schema)})"
            )
        # With table `systems` present ASE only reads; no lock file, so read-only dirs work.
        self._db = connect(str(self.path), type="db", use_lock_file=False)
        self._layouts: dict[tuple[int, ...], AOLayout] = {}

    # -- the HamiltonianDB reading interface -------------------------------------------------
    def __len__(self) -> int:
        return self._read(lambda: self._db.count(), "counting rows")

    def ids(self) -> list[int]:
        """ASE row ids, ascending."""
        return self._read(
            lambda: sorted(int(r.id) for r in self._db.select(include_data=False)), "listing rows"
        )

    def infos(self) -> list[MoleculeInfo]:
        """Id and atomic numbers of every row, ascending (no matrices read); no sources."""
        return self._read(
            lambda: sorted(
                (
                    MoleculeInfo(int(r.id), np.asarray(r.numbers, dtype=np.int64))
                    for r in self._db.select(include_data=False)
                ),
                key=lambda info: info.id,
            ),
            "listing rows",
        )

    def structures(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(id, atomic_numbers [n], positions [n, 3] Å)`` of every row, ascending id, without
        reading the matrices."""
        for row in self._rows(include_data=False):
            z = np.asarray(row.numbers, dtype=np.int64)
            yield int(row.id), z, np.asarray(row.positions, dtype=np.float64).reshape(len(z), 3)

    def get(self, mol_id: int) -> MoleculeRecord:
        try:
            row = self._db.get(id=int(mol_id))
        except KeyError:
            raise DataError(f"{self.path}: no row with id {mol_id}") from None
        except _READ_ERRORS as err:
            raise DataError(f"{self.path}: row {mol_id}: unreadable ({err})") from None
        return self._record(row)

    def __iter__(self) -> Iterator[MoleculeRecord]:
        for row in self._rows():
            yield self._record(row)

    def _rows(self, include_data: bool = True):
        """ASE rows in id order; a damaged row is a ``DataError`` naming the file."""
        rows = self._read(
            lambda: self._db.select(sort="id", include_data=include_data), "reading rows"
        )
        while True:
            try:
                yield next(rows)
            except StopIteration:
                return
            except _READ_ERRORS as err:
                raise DataError(f"{self.path}: unreadable row ({err})") from None

    @property
    def recipe(self) -> dict:
        """What the labels are: basis, AO order delivered, and where they came from."""
        return {
            "basis": self.basis,
            "ao_order": "pyscf",
            "source_format": "schnorb-md17",
            "source_ao_order": "orca",
        }

    def failures(self) -> dict[int, str]:
        return {}

    def done_ids(self) -> set[int]:
        return set(self.ids())

    def close(self) -> None:
        """Nothing to release (ASE opens a connection per query); for symmetry with
        HamiltonianDB."""

    def __enter__(self) -> MD17Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _read(self, fn, what: str):
        try:
            return fn()
        except DeqhError:
            raise
        except _READ_ERRORS as err:
            raise DataError(f"{self.path}: ASE database error while {what} ({err})") from None

    def _layout(self, z: np.ndarray, where: str) -> AOLayout:
        key = tuple(int(e) for e in np.unique(z))
        if key not in self._layouts:
            try:
                self._layouts[key] = AOLayout(self.basis, key)
            except DeqhError as err:
                raise DataError(f"{where}: {err}") from None
        return self._layouts[key]

    def _record(self, row) -> MoleculeRecord:
        where = f"{self.path}: row {row.id}"
        try:
            z = np.asarray(row.numbers, dtype=np.int64)
            pos = np.asarray(row.positions, dtype=np.float64).reshape(len(z), 3)
            data = dict(row.data)
        except _READ_ERRORS as err:
            raise DataError(f"{where}: unreadable row ({err})") from None
        if not np.isfinite(pos).all():
            raise DataError(f"{where}: positions contain NaN or inf")
        if "hamiltonian" not in data:
            keys = ", ".join(sorted(data)) or "nothing"
            raise DataError(f"{where}: no 'hamiltonian' in row.data (it holds {keys})")
        layout = self._layout(z, where)
        n_ao = int(layout.n_ao_table[z].sum())
        matrices = {}
        for name in ("hamiltonian", "overlap"):
            if data.get(name) is None:
                matrices[name] = None
                continue
            m = self._square(data[name], name, n_ao, z, where)
            matrices[name] = convert(m, layout, z, "orca", "pyscf")
        return MoleculeRecord(
            id=int(row.id),
            atomic_numbers=z,
            positions=pos,
            hamiltonian=matrices["hamiltonian"],
            overlap=matrices["overlap"],
        )

    def _square(self, value, name: str, n_ao: int, z: np.ndarray, where: str) -> np.ndarray:
        try:
            m = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {name} is not a numeric array ({err})") from None
        if m.ndim == 1 and m.size == n_ao * n_ao:  # some files store the matrix flattened
            m = m.reshape(n_ao, n_ao)
        if m.shape != (n_ao, n_ao):
            formula = "".join(symbol(int(e)) for e in z)
            raise DataError(
                f"{where}: {name} has shape {m.shape}, but {formula} in basis {self.basis} has "
                f"{n_ao} AOs, so expected ({n_ao}, {n_ao}); wrong basis for this file?"
            )
        if not np.isfinite(m).all():
            raise DataError(f"{where}: {name} contains NaN or inf")
        return m


def open_source(path: str | Path, basis: str | None = None) -> HamiltonianDB | MD17Reader:
    """Open a data file read-only, choosing the reader by content (not by name).

    A QH9-schema SQLite file (table ``data``) gives a :class:`HamiltonianDB`; an ASE database
    (table ``systems``) gives an :class:`MD17Reader` in ``basis`` (default def2-SVP). If
    ``basis`` is given for a QH9-schema file whose recipe names another basis, that is an error.
    """
    path = Path(path)
    _check_file(path)
    schema = _sqlite_schema(path)
    if schema is None:
        raise DataError(
            f"{path}: unknown format: not an SQLite file (expected a QH9-schema database or an "
            "ASE database such as SchNOrb's MD17 files)"
        )
    if "systems" in schema:
        return MD17Reader(path, basis=basis or "def2-svp")
    if "data" in schema:
        db = HamiltonianDB(path)
        stored = (db.recipe or {}).get("basis")
        if basis is not None and stored is not None and stored.lower() != basis.lower():
            db.close()
            raise DataError(f"{path}: labels are in basis {stored!r}, not the requested {basis!r}")
        return db
    raise DataError(
        f"{path}: unknown SQLite layout (tables: {_table_list(schema)}); expected table 'data' "
        "(QH9 schema) or 'systems' (ASE database)"
    )
