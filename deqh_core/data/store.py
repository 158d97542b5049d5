"""The native on-disk format: QH9's raw SQLite schema, plus optional extras.

Table ``data`` holds, *by position*, ``id, N, Z, pos, Ham``: id, atom count, atomic numbers
(int32 blob), positions (float64 blob, Å) and the converged Fock matrix (float64 blob, PySCF AO
order, Hartree). Real QH9-stable / QH9-dynamic files load unchanged because those five are read
by position whatever their names. Raw QH9-dynamic files (recognised by a ``geo_id`` column)
hold ``id, geo_id, N, Z, pos, ...`` with the molecule's id in ``id``, positions in Bohr and the
matrix in column ``Ham`` (or the sixth column in older releases). QH9's generator binds that id
from a numpy int64, which SQLite stores as an 8-byte blob (decoded here as little-endian int64,
as QH9's loader does; a plain integer is read as is). Each geometry gets the row's ``rowid`` as
its id and ``"mol<id>/geo<geo_id>"`` as its source, so the geometries of one molecule share the
group ``"mol<id>"`` (:func:`~deqh_core.data.splits.groups_from_sources`); positions are
converted to Å. Our own files add optional columns (``overlap``, ``energy``, ``source``,
``n_cycles``, ``wall_time``), a ``meta`` table with the labelling recipe, a ``failures``
table for molecules whose SCF did not converge and a ``prior`` table (``id, kind, h0``: the
prior ``H0`` of the file's recipe, float64 blob, PySCF AO order, Hartree; ``kind`` ``"minao"``
is the labelling SCF's own first Fock matrix ``F[D_minao]``). QH9's readers see none of them.

Each molecule is written in its own transaction, so a killed writer leaves every finished
molecule intact and nothing half-written.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqh_core.util.errors import DataError
from deqh_core.util.files import not_found

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data (
    id INTEGER PRIMARY KEY, N INTEGER NOT NULL, Z BLOB NOT NULL, pos BLOB NOT NULL,
    Ham BLOB NOT NULL, overlap BLOB, energy REAL, source TEXT, n_cycles INTEGER, wall_time REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY, source TEXT, reason TEXT NOT NULL, n_cycles INTEGER
);
CREATE TABLE IF NOT EXISTS prior (
    id INTEGER NOT NULL, kind TEXT NOT NULL, h0 BLOB NOT NULL, PRIMARY KEY (id, kind)
);
"""
BOHR_IN_ANGSTROM = 0.52917721092  # the value PySCF uses (pyscf.lib.param.BOHR)
_EXTRAS = ("overlap", "energy", "source", "n_cycles", "wall_time")


@dataclass
class MoleculeRecord:
    """One molecule. Positions in Å; matrices ``[n_ao, n_ao]`` in PySCF AO order, Hartree."""

    id: int
    atomic_numbers: np.ndarray  # [n_atoms] int64
    positions: np.ndarray  # [n_atoms, 3] float64, Å
    hamiltonian: np.ndarray | None = None
    overlap: np.ndarray | None = None
    energy: float | None = None  # total energy, Hartree
    source: str | None = None  # where the geometry came from, e.g. "water#3"
    n_cycles: int | None = None  # SCF cycles the label took
    wall_time: float | None = None  # seconds the label took
    h0_minao: np.ndarray | None = None  # the minao prior F[D_minao] of the file's recipe


@dataclass
class MoleculeInfo:
    """What splits need of a molecule, read without its matrices or positions."""

    id: int
    atomic_numbers: np.ndarray  # [n_atoms] int64
    source: str | None = None


def _array(blob, dtype: str, what: str, where: str) -> np.ndarray:
    """The numbers in a blob (read as bytes: a blob is never unpickled), as a flat array.

    Raises:
        DataError: not a blob, or a byte count that is no whole number of ``dtype`` items.
    """
    size = np.dtype(dtype).itemsize
    if not isinstance(blob, bytes) or len(blob) % size:
        got = f"a {len(blob)}-byte blob" if isinstance(blob, bytes) else repr(blob)[:40]
        kind = "float64" if dtype.endswith("f8") else "int32"
        raise DataError(f"{where}: {what} holds {got}, not {kind} numbers")
    return np.frombuffer(blob, dtype=dtype)


def _square(blob: bytes, what: str, where: str) -> np.ndarray:
    flat = _array(blob, "<f8", what, where)
    n = round(float(np.sqrt(flat.size)))
    if n * n != flat.size:
        raise DataError(f"{where}: {what} has {flat.size} entries, not a square matrix")
    return flat.reshape(n, n).astype(np.float64)


def _molecule_id(value, where: str) -> int:
    """QH9-dynamic's molecule id: an integer, or the 8-byte blob of a numpy int64."""
    if isinstance(value, bytes):
        if len(value) != 8:
            raise DataError(f"{where}: column id holds a {len(value)}-byte blob, not an int64")
        return int(np.frombuffer(value, dtype="<i8")[0])
    if isinstance(value, int):
        return value
    raise DataError(f"{where}: column id holds {value!r}, neither an integer nor an int64 blob")


class HamiltonianDB:
    """Reader/writer of one QH9-schema SQLite file.

    ``mode="r"`` opens read-only (works on files in read-only locations, e.g. the bundled
    data); ``mode="a"`` creates the file and tables if needed.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        self.mode = mode
        if mode == "r" and not self.path.is_file():
            raise DataError(not_found(self.path, "database file"))
        try:
            if mode == "r":
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            else:
                existed = self.path.is_file() and self.path.stat().st_size > 0
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path)
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
                if existed and "data" not in tables:  # someone else's database: leave it be
                    self._db.close()
                    held = ", ".join(sorted(tables)) or "nothing"
                    raise DataError(
                        f"{self.path}: an SQLite file without a 'data' table (it holds "
                        f"{held}); labels go only into a new file or a QH9-schema one"
                    )
                self._db.executescript(_SCHEMA)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as err:
            raise DataError(f"{self.path}: not a readable SQLite database ({err})") from None
        if "data" not in tables:
            raise DataError(f"{self.path}: no table 'data' (not a QH9-schema database)")
        self._has_meta = "meta" in tables
        self._has_failures = "failures" in tables
        self._has_prior = "prior" in tables
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(data)")]
        if len(cols) < 5:
            raise DataError(f"{self.path}: table 'data' has {len(cols)} columns, expected >= 5")
        self._columns = cols
        self._extras = [c for c in _EXTRAS if c in cols[5:]]
        self._bohr = "geo_id" in cols[1:2]
        if self._bohr:  # raw QH9-dynamic
            ham = "Ham" if "Ham" in cols else cols[5]
            self._key = "rowid"
            self._select = ["rowid", cols[2], cols[3], cols[4], ham, cols[0], cols[1]]
        else:
            self._key = cols[0]
            self._select = cols[:5] + self._extras

    # -- reading -------------------------------------------------------------------------
    @property
    def raw_dynamic(self) -> bool:
        """A raw QH9-dynamic file: ids are row numbers, positions stored in Bohr."""
        return self._bohr

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM data")[0][0]

    def ids(self) -> list[int]:
        """Ids of all molecules, ascending.

        Raises:
            DataError: an id that is no integer, or one given to two molecules; names it.
        """
        return self._checked_ids(
            [r[0] for r in self._query(f"SELECT {self._key} FROM data ORDER BY 1")]
        )

    def _checked_ids(self, ids: list) -> list[int]:
        """``ids`` (ascending) if each is an integer given to one molecule; else a DataError."""
        bad = next((i for i in ids if type(i) is not int), None)
        if bad is not None:
            raise DataError(f"{self.path}: molecule id {bad!r} is not an integer")
        twice = next((a for a, b in itertools.pairwise(ids) if a == b), None)
        if twice is not None:
            raise DataError(f"{self.path}: molecule id {twice} is given to two molecules")
        return ids

    def elements(self) -> list[int]:
        """Atomic numbers present in the file (reads only the id and Z columns).

        Raises:
            DataError: a record holds a number that is no element (outside 1-118); names it.
        """
        found: set[int] = set()
        query = f"SELECT {self._select[0]}, {self._select[2]} FROM data"
        for mol_id, blob in self._query(query):
            z = _array(blob, "<i4", "Z", f"{self.path}: molecule id {mol_id}")
            if z.size and (z.min() < 1 or z.max() > 118):
                bad = int(z[(z < 1) | (z > 118)][0])
                raise DataError(
                    f"{self.path}: molecule id {mol_id}: atomic number {bad} is not an element "
                    "(1-118)"
                )
            found.update(z.tolist())
        return sorted(found)

    def infos(self) -> list[MoleculeInfo]:
        """Id, atomic numbers and source of every molecule, ascending by id; reads neither
        positions nor matrices, so it is cheap on a file of any size."""
        if self._bohr:  # source from QH9-dynamic's molecule id and geo_id
            extra = f"{self._select[5]}, {self._select[6]}"
        else:
            extra = "source" if "source" in self._extras else "NULL"
        rows = self._query(
            f"SELECT {self._select[0]}, {self._select[2]}, {extra} FROM data ORDER BY 1"
        )
        self._checked_ids([row[0] for row in rows])
        return [
            MoleculeInfo(
                int(row[0]),
                _array(row[1], "<i4", "Z", f"{self.path}: molecule id {row[0]}").astype(np.int64),
                self._dynamic_source(row[0], *row[2:]) if self._bohr else row[2],
            )
            for row in rows
        ]

    def structures(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(id, atomic_numbers [n], positions [n, 3] Å)`` of every molecule, ascending id,
        without reading the matrices."""
        key, z_col, pos_col = self._select[0], self._select[2], self._select[3]
        for mol_id, z, pos in self._query(f"SELECT {key}, {z_col}, {pos_col} FROM data ORDER BY 1"):
            where = f"{self.path}: molecule id {mol_id}"
            z = _array(z, "<i4", "Z", where).astype(np.int64)
            pos = _array(pos, "<f8", "pos", where).astype(np.float64)
            if pos.size != 3 * z.size:
                raise DataError(
                    f"{self.path}: molecule id {mol_id}: {z.size} atomic numbers but "
                    f"{pos.size} coordinates"
                )
            pos = pos.reshape(-1, 3) * (BOHR_IN_ANGSTROM if self._bohr else 1.0)
            yield int(mol_id), z, pos

    def blob_sizes(self) -> Iterator[tuple[int, np.ndarray, int, int, int | None]]:
        """``(id, atomic_numbers, bytes of positions, bytes of Ham, bytes of overlap or None)``
        of every molecule, ascending id; SQLite's ``length()`` reads no matrix, so this is cheap
        on a file of any size."""
        key, z_col, pos_col, ham = (self._select[i] for i in (0, 2, 3, 4))
        overlap = "length(overlap)" if "overlap" in self._extras else "NULL"
        sql = f"SELECT {key}, {z_col}, length({pos_col}), length({ham}), {overlap} FROM data"
        for mol_id, z, n_pos, n_ham, n_overlap in self._query(sql + " ORDER BY 1"):
            yield (
                int(mol_id),
                _array(z, "<i4", "Z", f"{self.path}: molecule id {mol_id}").astype(np.int64),
                n_pos,
                n_ham,
                n_overlap,
            )

    def get(self, mol_id: int) -> MoleculeRecord:
        cols = ", ".join(self._select)
        rows = self._query(f"SELECT {cols} FROM data WHERE {self._key} = ?", (mol_id,))
        if not rows:
            raise DataError(f"{self.path}: no molecule with id {mol_id}")
        return self._record(rows[0])

    def __iter__(self) -> Iterator[MoleculeRecord]:
        cols = ", ".join(self._select)
        for row in self._query(f"SELECT {cols} FROM data ORDER BY 1"):
            yield self._record(row)

    def _record(self, row: tuple) -> MoleculeRecord:
        mol_id, n, z, pos, ham = row[:5]
        where = f"{self.path}: molecule id {mol_id}"
        z = _array(z, "<i4", "Z", where).astype(np.int64)
        pos = _array(pos, "<f8", "pos", where).astype(np.float64)
        if z.size != n or pos.size != 3 * n:
            raise DataError(
                f"{where}: N={n} but {z.size} atomic numbers and {pos.size} coordinates"
            )
        if self._bohr:
            pos = pos * BOHR_IN_ANGSTROM
            extra = {"source": self._dynamic_source(mol_id, row[5], row[6])}
        else:
            extra = dict(zip(self._extras, row[5:]))
        overlap = extra.get("overlap")
        record = MoleculeRecord(
            id=int(mol_id),
            atomic_numbers=z,
            positions=pos.reshape(n, 3),
            hamiltonian=_square(ham, "Ham", where),
            overlap=None if overlap is None else _square(overlap, "overlap", where),
            energy=extra.get("energy"),
            source=extra.get("source"),
            n_cycles=extra.get("n_cycles"),
            wall_time=extra.get("wall_time"),
        )
        for name in ("positions", "hamiltonian", "overlap"):
            value = getattr(record, name)
            if value is not None and not np.isfinite(value).all():
                raise DataError(f"{where}: {name} contains NaN or inf")
        return record

    def _dynamic_source(self, row_id: int, mol_id, geo_id) -> str:
        """``"mol<id>/geo<geo_id>"`` of a raw QH9-dynamic row (``mol_id`` as stored)."""
        return f"mol{_molecule_id(mol_id, f'{self.path}: molecule id {row_id}')}/geo{geo_id}"

    @property
    def recipe(self) -> dict | None:
        """The labelling recipe stored in ``meta`` (xc, basis, grid, tolerances, PySCF
        version, ...), or None for files without one (e.g. raw QH9)."""
        if not self._has_meta:
            return None
        rows = self._query("SELECT value FROM meta WHERE key = 'recipe'")
        if not rows:
            return None
        try:
            recipe = json.loads(rows[0][0])
        except (TypeError, ValueError) as err:
            raise DataError(f"{self.path}: meta 'recipe' is not JSON ({err})") from None
        if not isinstance(recipe, dict):
            raise DataError(f"{self.path}: meta 'recipe' is not a mapping of recipe fields")
        return recipe

    def prior_ids(self, kind: str) -> set[int]:
        """Ids of the molecules whose prior ``H0`` of ``kind`` the file stores."""
        if not self._has_prior:
            return set()
        return {int(i) for (i,) in self._query("SELECT id FROM prior WHERE kind = ?", (kind,))}

    def prior(self, mol_id: int, kind: str) -> np.ndarray | None:
        """The stored prior ``H0`` of ``kind`` of one molecule (``[n_ao, n_ao]``, PySCF order,
        Hartree, made with the file's recipe), or None."""
        if not self._has_prior:
            return None
        rows = self._query("SELECT h0 FROM prior WHERE id = ? AND kind = ?", (mol_id, kind))
        if not rows:
            return None
        return _square(rows[0][0], f"prior {kind} H0", f"{self.path}: molecule id {mol_id}")

    def failures(self) -> dict[int, str]:
        """``{id: reason}`` of molecules whose label could not be computed."""
        if not self._has_failures:
            return {}
        return {int(i): r for i, r in self._query("SELECT id, reason FROM failures")}

    def done_ids(self) -> set[int]:
        """Ids already finished: written or recorded as failed."""
        return set(self.ids()) | set(self.failures())

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as err:
            raise DataError(f"{self.path}: database error on read ({err})") from None

    # -- writing -------------------------------------------------------------------------
    def set_recipe(self, recipe: dict) -> None:
        """Store the recipe; refuse if the file already holds labels of another recipe."""
        self._writable()
        current = self.recipe
        if current is not None and current != recipe:
            keys = set(current) | set(recipe)
            changed = sorted(k for k in keys if current.get(k) != recipe.get(k))
            raise DataError(
                f"{self.path}: holds labels made with another recipe (differs in "
                f"{', '.join(changed)}); write to a new file instead of mixing them"
            )
        with self._db:
            value = json.dumps(recipe, sort_keys=True)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('recipe', ?)", (value,))

    def write(self, record: MoleculeRecord) -> None:
        """Commit one molecule atomically (its own transaction)."""
        self._writable()
        z = np.asarray(record.atomic_numbers)
        h = np.ascontiguousarray(record.hamiltonian, dtype="<f8")
        if h.ndim != 2 or h.shape[0] != h.shape[1]:
            raise DataError(f"{self.path}: molecule id {record.id}: Hamiltonian must be square")
        for name in ("positions", "hamiltonian", "overlap"):
            value = getattr(record, name)
            if value is not None and not np.isfinite(value).all():
                raise DataError(f"molecule id {record.id}: {name} contains NaN or inf; not written")
        s = record.overlap
        h0 = record.h0_minao
        if h0 is not None and (h0.shape != h.shape or not np.isfinite(h0).all()):
            raise DataError(f"molecule id {record.id}: its minao H0 is not a finite {h.shape}")
        with self._db:
            if h0 is not None:  # one transaction: the prior row exists only with its label
                self._db.execute(
                    "INSERT OR REPLACE INTO prior VALUES (?, 'minao', ?)",
                    (int(record.id), np.ascontiguousarray(h0, dtype="<f8").tobytes()),
                )
            self._db.execute(
                "INSERT INTO data (id, N, Z, pos, Ham, overlap, energy, source, n_cycles, "
                "wall_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    int(record.id),
                    len(z),
                    np.ascontiguousarray(z, dtype="<i4").tobytes(),
                    np.ascontiguousarray(record.positions, dtype="<f8").tobytes(),
                    h.tobytes(),
                    None if s is None else np.ascontiguousarray(s, dtype="<f8").tobytes(),
                    record.energy,
                    record.source,
                    record.n_cycles,
                    record.wall_time,
                ),
            )

    def write_prior(self, mol_id: int, kind: str, h0: np.ndarray) -> None:
        """Commit the prior ``H0`` of ``kind`` of one molecule (``[n_ao, n_ao]``, PySCF order,
        Hartree, made with the file's recipe) into the ``prior`` table."""
        self._writable()
        h0 = np.ascontiguousarray(h0, dtype="<f8")
        if h0.ndim != 2 or h0.shape[0] != h0.shape[1] or not np.isfinite(h0).all():
            raise DataError(f"{self.path}: molecule id {mol_id}: {kind} H0 is not a finite square")
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO prior VALUES (?, ?, ?)", (int(mol_id), kind, h0.tobytes())
            )
        self._has_prior = True

    def record_failure(self, mol_id: int, source: str | None, reason: str, n_cycles=None) -> None:
        self._writable()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                (int(mol_id), source, reason, n_cycles),
            )

    def _writable(self) -> None:
        if self.mode != "a":
            raise DataError(f"{self.path}: opened read-only")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HamiltonianDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
