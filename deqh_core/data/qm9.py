"""QM9 geometries in QH9-stable order, read from the ``qm9pack`` package's CSV files.

QH9-stable labelled the 130,831 QM9 molecules that passed QM9's consistency check, in ascending
gdb index: entry ``i`` is QH9-stable id ``i``. ``qm9pack`` (PyPI, MIT, by QM9's author) ships
exactly these rows as ``data/qm9_part1..3.csv``. The package's own module imports
``pkg_resources`` and pandas, so it is never imported: its folder is found with
``importlib.util.find_spec`` and the CSVs are read with the csv module.

Columns used: ``Index`` (gdb index, 1-based), ``SMILES``, ``N_atoms``, ``Elements`` (a list of
symbols) and ``XYZ_Ang`` (a list of ``[x, y, z]`` in Å; Mathematica exponents such as
``1.2*^-5``, as in QM9's raw XYZ text, are read as well as ``1.2E-5``).

Parsing the 230 MB of CSV takes a few seconds, so the parsed table is cached as an npz file
(~70 MB) under :func:`deqh_core.util.cache.cache_dir`, keyed by the CSV files' sizes and
modification times; selecting ids (``deqh data qh9 --list``) then takes well under a second.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqh_core.ao.basis import atomic_number
from deqh_core.data.generate import Task
from deqh_core.data.splits import QH9_STABLE_SIZE, qh9_stable_id_split, qh9_stable_ood_split
from deqh_core.util.cache import cache_dir
from deqh_core.util.errors import BasisError, DataError
from deqh_core.util.files import atomic_open

CSV_NAMES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
INSTALL_HINT = "pip install 'deqh[qm9]'  (or: pip install qm9pack)"
_COLUMNS = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang")
_CACHE_VERSION = 1  # bump when the cached arrays change meaning
SPLITS = ("stable-id", "stable-ood")
PARTS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class QM9Table:
    """QM9 in QH9-stable order; row ``i`` is QH9-stable id ``i``.

    ``gdb`` ``[n]`` gdb index (1-based), ``n_atoms`` ``[n]``, ``offsets`` ``[n + 1]`` (atoms of
    molecule ``i`` are ``offsets[i]:offsets[i + 1]``), ``atomic_numbers`` ``[n_total]``,
    ``positions`` ``[n_total, 3]`` Å, ``smiles`` ``[n]`` (UTF-8 bytes).
    """

    gdb: np.ndarray
    n_atoms: np.ndarray
    offsets: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    smiles: np.ndarray

    def __len__(self) -> int:
        return len(self.gdb)

    def geometry(self, qh9_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers ``[n]`` (int64) and positions ``[n, 3]`` (float64, Å) of one
        molecule."""
        a, b = self.offsets[qh9_id], self.offsets[qh9_id + 1]
        return self.atomic_numbers[a:b].astype(np.int64), self.positions[a:b].astype(np.float64)

    def source(self, qh9_id: int) -> str:
        """``"qm9:<gdb index> <SMILES>"``, the ``source`` of the molecule's label."""
        return f"qm9:{int(self.gdb[qh9_id])} {self.smiles[qh9_id].decode()}"


def qm9pack_files() -> list[Path]:
    """The three CSV files of the installed ``qm9pack``; a clear ``DataError`` (what to install)
    when the package or its data is missing. Does not import the package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"QM9 geometries come from the qm9pack package, which is not installed: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    paths = [folder / name for name in CSV_NAMES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{folder}: the installed qm9pack lacks {', '.join(missing)}; reinstall it: "
            "pip install --force-reinstall qm9pack"
        )
    return paths


def read_qm9_csv(paths: Sequence[str | Path], expected: int | None = QH9_STABLE_SIZE) -> QM9Table:
    """Parse and check QM9 CSV files (in order): ``expected`` rows (QH9-stable's 130,831) in
    strictly ascending gdb index, as many symbols and coordinate triples as ``N_atoms``.
    Errors name the file and line."""

    csv.field_size_limit(1 << 30)
    gdb: list[int] = []
    n_atoms: list[int] = []
    smiles: list[bytes] = []
    symbols: list[str] = []
    coords: list[str] = []  # every coordinate as text, converted in one call below
    where: list[str] = []  # "file:line" of each row, for errors found after the loop
    for path in map(Path, paths):
        try:
            fh = open(path, newline="", encoding="utf-8")
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err})") from None
        with fh:
            rows = csv.reader(fh)
            header = next(rows, [])
            absent = [c for c in _COLUMNS if c not in header]
            if absent:
                raise DataError(f"{path}:1: no column {', '.join(absent)} in the header")
            col = [header.index(c) for c in _COLUMNS]
            for row in rows:
                line = f"{path}:{rows.line_num}"
                try:
                    index, smi, n, elements, xyz = (row[k] for k in col)
                    index, n = int(index), int(n)
                except (IndexError, ValueError):
                    raise DataError(f"{line}: cannot read Index/N_atoms of {row[:3]}") from None
                if gdb and index <= gdb[-1]:
                    raise DataError(
                        f"{line}: gdb index {index} after {gdb[-1]}; QM9 rows must be in "
                        "strictly ascending gdb index (QH9-stable id = row)"
                    )
                syms = [s.strip(" '\"") for s in elements.strip("[] ").split(",")]
                values = _coordinates(xyz)
                if n < 1 or len(syms) != n or len(values) != 3 * n:
                    raise DataError(
                        f"{line}: gdb {index}: N_atoms = {n} but {len(syms)} Elements and "
                        f"{len(values)} XYZ_Ang numbers"
                    )
                gdb.append(index)
                n_atoms.append(n)
                smiles.append(smi.encode())
                symbols += syms
                coords += values
                where.append(line)
    if expected is not None and len(gdb) != expected:
        files = ", ".join(str(p) for p in paths)
        raise DataError(
            f"{files}: {len(gdb):,} molecules, but QH9-stable has {expected:,}; "
            "is this the qm9pack release deqh knows (>= 1.0)?"
        )
    counts = np.asarray(n_atoms, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    row_of_atom = np.repeat(np.arange(len(counts)), counts)
    try:
        positions = np.array(coords, dtype=np.float64).reshape(-1, 3)
    except ValueError:
        bad = next(i for i, c in enumerate(coords) if not _is_float(c))
        raise DataError(f"{where[row_of_atom[bad // 3]]}: bad coordinate {coords[bad]!r}") from None
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        raise DataError(f"{where[row_of_atom[np.argmin(finite)]]}: NaN or inf coordinate")
    table = {}
    for sym in set(symbols):
        try:
            table[sym] = atomic_number(sym)
        except BasisError:
            atom = symbols.index(sym)
            raise DataError(f"{where[row_of_atom[atom]]}: unknown element {sym!r}") from None
    return QM9Table(
        gdb=np.asarray(gdb, dtype=np.int64),
        n_atoms=counts,
        offsets=offsets,
        atomic_numbers=np.array([table[s] for s in symbols], dtype=np.uint8),
        positions=positions,
        smiles=np.array(smiles, dtype=bytes),
    )


def _coordinates(text: str) -> list[str]:
    """``"[[x,y,z],...]"`` -> ``["x", "y", "z", ...]``, Mathematica ``*^`` exponents as ``e``."""
    return text.replace("[", "").replace("]", "").replace("*^", "e").split(",")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def qm9_table(paths: Sequence[str | Path] | None = None, cache: bool = True) -> QM9Table:
    """The QM9 table of ``paths`` (default: the installed qm9pack), from the npz cache when
    it matches the files' sizes and modification times, else parsed (and cached)."""
    paths = [Path(p) for p in paths] if paths is not None else qm9pack_files()
    if not cache:
        return read_qm9_csv(paths)
    path = _cache_path(paths)
    table = _read_cache(path)
    if table is None:
        table = read_qm9_csv(paths)
        _write_cache(path, table)
    return table


def _cache_path(paths: Sequence[Path]) -> Path:
    key = [_CACHE_VERSION]
    for p in paths:
        stat = p.stat()
        key.append((str(p.resolve()), stat.st_size, stat.st_mtime_ns))
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    return cache_dir() / f"qm9_{digest}.npz"


def _read_cache(path: Path) -> QM9Table | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            table = QM9Table(**{name: f[name] for name in QM9Table.__dataclass_fields__})
    except Exception:  # missing, truncated, not an npz, other keys: all mean "parse again"
        return None
    n = len(table.gdb)
    consistent = (
        n == QH9_STABLE_SIZE
        and table.n_atoms.shape == table.smiles.shape == (n,)
        and table.offsets.shape == (n + 1,)
        and table.offsets[-1] == len(table.atomic_numbers) == len(table.positions)
        and np.array_equal(np.diff(table.offsets), table.n_atoms)
    )
    return table if consistent else None


def _write_cache(path: Path, table: QM9Table) -> None:
    try:
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **vars(table))
    except OSError as err:  # an unwritable cache only costs the parse next time
        warnings.warn(f"could not cache the parsed QM9 table at {path}: {err}", stacklevel=3)


def parse_ids(text: str) -> np.ndarray:
    """``"0-99,150,200-210"`` -> sorted distinct ids; ranges ``a-b`` include both ends."""
    ids: list[np.ndarray] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if match is None:
            raise DataError(f"--ids: {item!r} is neither an id nor a range a-b (e.g. 0-99,150)")
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            raise DataError(f"--ids: range {item!r} runs backwards")
        ids.append(np.arange(lo, hi + 1, dtype=np.int64))
    if not ids:
        raise DataError(f"--ids: no ids in {text!r}")
    return np.unique(np.concatenate(ids))


def select_ids(
    n_atoms: np.ndarray,
    split: str = "stable-id",
    part: str = "all",
    max_atoms: int | None = None,
    ids: np.ndarray | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """QH9-stable ids (ascending) in ``part`` of ``split``, with at most ``max_atoms`` atoms,
    among ``ids`` if given, the first ``limit`` of them if given. An empty selection is an
    error (a command would otherwise write an empty file and succeed).

    ``n_atoms`` ``[130831]``: the atom count of every QH9-stable molecule.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
    if part not in PARTS:
        raise DataError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    every = np.arange(len(n_atoms), dtype=np.int64)
    keep = np.ones(len(n_atoms), dtype=bool)
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(n_atoms)):
            bad = int(ids[(ids < 0) | (ids >= len(n_atoms))][0])
            raise DataError(f"--ids: {bad} is not a QH9-stable id (0 <= id < {len(n_atoms):,})")
        keep[:] = False
        keep[ids] = True
    if part != "all":
        if split == "stable-id":
            chosen = qh9_stable_id_split(every)
        else:
            chosen = qh9_stable_ood_split(every, n_atoms)
        in_part = np.zeros(len(n_atoms), dtype=bool)
        in_part[getattr(chosen, part)] = True
        keep &= in_part
    if max_atoms is not None:
        keep &= n_atoms <= max_atoms
    selected = every[keep]
    if not selected.size:
        given = [f"split {split}", f"part {part}"]
        given += [] if max_atoms is None else [f"at most {max_atoms} atoms"]
        given += [] if ids is None else [f"{len(ids)} --ids"]
        raise DataError(f"no QH9-stable molecule matches the selection ({', '.join(given)})")
    return selected if limit is None else selected[:limit]


def qh9_tasks(table: QM9Table, ids: Sequence[int] | np.ndarray) -> list[Task]:
    """Label tasks of QH9-stable ``ids``: task id = QH9-stable id, so ``--shard i/N`` takes the
    ids with ``id % N == i`` and a rerun resumes by id."""
    tasks = []
    for i in map(int, ids):
        z, pos = table.geometry(i)
        tasks.append(Task(i, table.source(i), z, pos))
    return tasks
