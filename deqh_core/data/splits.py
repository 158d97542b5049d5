"""Reproducible train/val/test splits of molecule ids, and the QH9 benchmark splits.

QH9's four tasks (Yu et al., "QH9: A Quantum Hamiltonian Prediction Benchmark for QM9 Molecules",
NeurIPS 2023 D&B; definitions as implemented in ``divelab/AIRS``, file
``OpenDFT/QHBench/QH9/datasets.py``, and the counts in that folder's README):

* **QH9-stable-id**: random 80/10/10 of the 130,831 molecules (104,664/13,083/13,084); sizes
  are ``int(n * 0.8)``, ``int(n * 0.1)`` and the rest, permutation
  ``np.random.RandomState(43).permutation(n)`` over file order. QH9Stable.db's rows are its
  ids 0..130,830 in ascending order, so permuting positions is permuting QH9-stable ids.
  :func:`qh9_stable_id_split` gives every id its canonical part, so a file holding any
  *subset* of QH9-stable (ids = QH9-stable ids) splits exactly as QH9 does;
  ``random_split(ids, (0.8, 0.1, 0.1), seed=43)`` agrees only on the full set.
* **QH9-stable-ood**: by size: <= 20 atoms train, 21-22 val, >= 23 test
  (104,001/17,495/9,335 in QH9's README; QM9 as shipped by qm9pack gives 103,790/17,594/9,447,
  see docs/data.md): :func:`qh9_stable_ood_split` (:func:`size_ood_split` with its defaults,
  checking that the ids are QH9-stable ids).
* **QH9-dynamic-geo**: every molecule's trajectory geometries (100 per molecule in
  QH9-dynamic-300k) are divided 80/10/10: :func:`within_group_split` with ``(0.8, 0.1, 0.1)``.
  QH9 draws each molecule's permutation with a seed taken from the row index, which we do not
  mimic, so the membership differs but the definition is the same.
* **QH9-dynamic-mol**: whole molecules 80/10/10 (``int`` of the fractions, rest to test), the
  molecule indices shuffled by Python's ``random`` seeded 43: :func:`group_split` with
  ``(0.8, 0.1, 0.1)`` and seed 43 reproduces it when the groups are the molecule's index in file
  order (QH9 numbers molecules 0, 1, ... by position: 100 consecutive rows each).
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from deqh_core.ao.basis import formula
from deqh_core.util.errors import DataError
from deqh_core.util.files import atomic_write

Sizes = Sequence[float | int | None] | str
_PARTS = ("train", "val", "test")
QH9_STABLE_SIZE = 130_831
"""Molecules in QH9-stable: QM9 without the 3,054 that failed its consistency check."""


@dataclass
class Split:
    """Molecule ids of the three parts, each sorted ascending and disjoint from the others.

    ``info`` records how the split was made (kind, seed, sizes), for the JSON file.
    """

    train: list[int]
    val: list[int]
    test: list[int]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = [
            np.sort(np.asarray(getattr(self, name), dtype=np.int64).reshape(-1)) for name in _PARTS
        ]
        for name, part in zip(_PARTS, parts):
            setattr(self, name, part.tolist())
        ids, counts = np.unique(np.concatenate(parts), return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"ids in more than one part (or repeated): {ids[counts > 1][:10].tolist()}"
            )

    def to_json(self, path: str | Path) -> None:
        """Write as JSON, atomically (:func:`deqh_core.util.files.atomic_write`)."""

        text = json.dumps(
            {"train": self.train, "val": self.val, "test": self.test, "info": self.info}
        )
        atomic_write(path, text)

    @classmethod
    def from_json(cls, path: str | Path) -> Split:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(*(raw[name] for name in _PARTS), info=raw.get("info", {}))
        except FileNotFoundError:
            raise DataError(f"{path}: no such split file") from None
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DataError(f"{path}: not a valid split file ({err!r})") from None


def parse_sizes(sizes: Sizes) -> tuple[list, bool]:
    """``(values, are_fractions)``. Ints are counts, floats fractions; a string such as
    ``"500/500/4000"`` or ``"0.8/0.1/0.1"`` is parsed; one ``None`` means "all the rest"."""
    if isinstance(sizes, str):
        parts = [p.strip() for p in sizes.split("/")]
        sizes = [None if p in ("", "rest") else _number(p) for p in parts]
    values = list(sizes)
    if len(values) != 3:
        raise ValueError(f"sizes must give train, val and test; got {len(values)} values")
    given = [v for v in values if v is not None]
    if len(given) < 2:
        raise ValueError("at most one of the sizes may be None (= all the rest)")
    is_int = [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in given]
    if all(is_int):
        fractions = False
    elif not any(is_int):
        fractions = True
    else:
        raise ValueError(f"sizes {values} mix counts (ints) and fractions (floats)")
    if any(v < 0 for v in given):
        raise ValueError(f"sizes must be >= 0, got {values}")
    if fractions and sum(given) > 1 + 1e-9:
        raise ValueError(f"fractions {values} sum to {sum(given):.6g} > 1")
    return values, fractions


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size") from None


def _counts(n, values: list, fractions: bool) -> np.ndarray:
    """``[..., 3]`` part sizes for ``n`` items (``n`` a scalar or an array of group sizes).

    Fractions are floored like QH9 (``int(n * f)``); when they sum to 1 or a size is None, the
    test part (or the None part) takes what is left, so every item gets a part.
    """
    n = np.asarray(n, dtype=np.int64)
    if fractions:
        exact = [None if v is None else np.floor(n * v + 1e-9).astype(np.int64) for v in values]
        if None not in values and abs(sum(values) - 1) < 1e-9:
            exact[2] = None
    else:
        exact = [None if v is None else np.broadcast_to(np.int64(v), n.shape) for v in values]
    rest = [k for k, e in enumerate(exact) if e is None]
    if rest:
        exact[rest[0]] = n - sum(e for e in exact if e is not None)
    counts = np.stack(exact, axis=-1)
    short = (counts.sum(axis=-1) > n) | (counts < 0).any(axis=-1)
    if short.any():
        have = int(n[short].min()) if n.ndim else int(n)
        where = f"a group of {have}" if n.ndim else f"{have} ids"
        asked = int(np.clip(counts, 0, None).sum(axis=-1)[short].max())
        raise ValueError(f"sizes {values} ask for {asked} items but there are only {where}")
    return counts


def _ids_array(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if np.unique(arr).size != arr.size:
        raise ValueError("ids contain duplicates")
    return arr


def _from_parts(ids: np.ndarray, part: np.ndarray, info: dict) -> Split:
    """``part[i]`` in {0, 1, 2} or -1 (left out) for every id."""
    return Split(*(ids[part == k].tolist() for k in range(3)), info=info)


def random_split(ids: Sequence[int] | np.ndarray, sizes: Sizes, seed: int) -> Split:
    """Random split of ``ids`` into parts of ``sizes`` (counts, fractions, or ``"a/b/c"``).

    The ids are sorted first, so the result depends only on the set of ids and the seed. With
    ``sizes=(0.8, 0.1, 0.1), seed=43`` this is QH9-stable-id's split.
    """
    arr = np.sort(_ids_array(ids))
    values, fractions = parse_sizes(sizes)
    n_train, n_val, n_test = _counts(arr.size, values, fractions).tolist()
    order = np.random.RandomState(seed).permutation(arr.size)
    part = np.full(arr.size, -1)
    part[order[:n_train]] = 0
    part[order[n_train : n_train + n_val]] = 1
    part[order[n_train + n_val : n_train + n_val + n_test]] = 2
    info = {"kind": "random", "seed": seed, "sizes": values}
    return _from_parts(arr, part, info)


def size_ood_split(
    ids: Sequence[int] | np.ndarray,
    n_atoms: Sequence[int] | np.ndarray,
    train_max: int = 20,
    val_max: int = 22,
) -> Split:
    """Out-of-distribution split by molecule size (QH9-stable-ood with the defaults).

    ``n_atoms <= train_max`` -> train, ``train_max < n_atoms <= val_max`` -> val, larger -> test.
    """
    arr = _ids_array(ids)
    n = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    if n.size != arr.size:
        raise ValueError(f"{arr.size} ids but {n.size} atom counts")
    if train_max > val_max:
        raise ValueError(f"train_max ({train_max}) must be <= val_max ({val_max})")
    part = np.where(n <= train_max, 0, np.where(n <= val_max, 1, 2))
    info = {"kind": "size_ood", "train_max": train_max, "val_max": val_max}
    return _from_parts(arr, part, info)


@cache
def qh9_stable_id_parts() -> np.ndarray:
    """Part (0 train, 1 val, 2 test) of every QH9-stable id: ``[130831]`` int8, read-only.

    QH9's definition: ``order = np.random.RandomState(43).permutation(130831)``; the first
    ``int(0.8 n)`` = 104,664 ids of ``order`` train, the next ``int(0.1 n)`` = 13,083 val,
    the remaining 13,084 test.
    """
    n = QH9_STABLE_SIZE
    order = np.random.RandomState(43).permutation(n)
    n_train, n_val = int(n * 0.8), int(n * 0.1)
    part = np.full(n, 2, dtype=np.int8)
    part[order[:n_train]] = 0
    part[order[n_train : n_train + n_val]] = 1
    part.setflags(write=False)
    return part


def check_qh9_stable_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """``ids`` as an int64 array; a ``DataError`` if one is not a QH9-stable id."""
    arr = _ids_array(ids)
    bad = arr[(arr < 0) | (arr >= QH9_STABLE_SIZE)]
    if bad.size:
        raise DataError(
            f"id {int(bad[0])} is not a QH9-stable id (0 <= id < {QH9_STABLE_SIZE:,}); the "
            "qh9_stable_* splits need a file whose molecule ids are QH9-stable ids, as "
            "`deqh data qh9` writes them"
        )
    return arr


def qh9_stable_id_split(ids: Sequence[int] | np.ndarray) -> Split:
    """QH9-stable-id membership of ``ids`` (QH9-stable ids, any subset): every id goes to its
    canonical part (:func:`qh9_stable_id_parts`), whatever else the file holds."""
    arr = check_qh9_stable_ids(ids)
    return _from_parts(arr, qh9_stable_id_parts()[arr], {"kind": "qh9_stable_id", "seed": 43})


def qh9_stable_ood_split(
    ids: Sequence[int] | np.ndarray, n_atoms: Sequence[int] | np.ndarray
) -> Split:
    """QH9-stable-ood membership of ``ids`` (QH9-stable ids) with ``n_atoms`` atoms each:
    <= 20 atoms train, 21-22 val, >= 23 test."""
    split = size_ood_split(check_qh9_stable_ids(ids), n_atoms, train_max=20, val_max=22)
    split.info = {**split.info, "kind": "qh9_stable_ood"}
    return split


def _group_index(groups: Sequence[Hashable], n: int) -> tuple[list, np.ndarray]:
    """Sorted distinct group keys and, per item, the index of its group."""
    groups = list(groups)
    if len(groups) != n:
        raise ValueError(f"{n} ids but {len(groups)} group keys")
    try:
        keys = sorted(set(groups))
    except TypeError:  # keys of mixed types: order them by their text
        keys = sorted(set(groups), key=repr)
    lookup = {k: i for i, k in enumerate(keys)}
    return keys, np.fromiter((lookup[g] for g in groups), dtype=np.int64, count=n)


def group_split(
    ids: Sequence[int] | np.ndarray, groups: Sequence[Hashable], sizes: Sizes, seed: int
) -> Split:
    """Split whole groups (molecules): all geometries of a group go to one part.

    ``sizes`` count *groups*. The sorted distinct group keys are shuffled with Python's
    ``random.Random(seed)``, as QH9 does, so that with QH9-dynamic's molecule indices as
    groups, ``(0.8, 0.1, 0.1)`` and seed 43 give QH9-dynamic-mol's split.
    """
    arr = _ids_array(ids)
    keys, index = _group_index(groups, arr.size)
    values, fractions = parse_sizes(sizes)
    n_train, n_val, n_test = _counts(len(keys), values, fractions).tolist()
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    order = np.asarray(order, dtype=np.int64)
    group_part = np.full(len(keys), -1)
    group_part[order[:n_train]] = 0
    group_part[order[n_train : n_train + n_val]] = 1
    group_part[order[n_train + n_val : n_train + n_val + n_test]] = 2
    info = {"kind": "group", "seed": seed, "sizes": values}
    return _from_parts(arr, group_part[index], info)


def within_group_split(
    ids: Sequence[int] | np.ndarray, groups: Sequence[Hashable], sizes: Sizes, seed: int
) -> Split:
    """Divide every group's members (geometries of one molecule) among train/val/test.

    ``sizes`` apply per group: fractions of each group (floored, rest to test when they sum to
    1), or counts taken from every group. QH9-dynamic-geo is ``(0.8, 0.1, 0.1)``.
    """
    arr = _ids_array(ids)
    _, index = _group_index(groups, arr.size)
    by_id = np.argsort(arr)  # draw the random keys in id order: independent of input order
    arr, index = arr[by_id], index[by_id]
    values, fractions = parse_sizes(sizes)
    group_size = np.bincount(index)
    counts = _counts(group_size, values, fractions)  # [n_groups, 3]
    # Random order inside each group: sort by (group, random key); rank = position in group.
    key = np.random.RandomState(seed).random_sample(arr.size)
    order = np.lexsort((key, index))  # by group, then random key
    start = np.cumsum(group_size) - group_size
    rank = np.empty(arr.size, dtype=np.int64)
    rank[order] = np.arange(arr.size) - start[index[order]]
    bounds = np.cumsum(counts, axis=1)[index]  # [n, 3]
    part = np.where(
        rank < bounds[:, 0],
        0,
        np.where(rank < bounds[:, 1], 1, np.where(rank < bounds[:, 2], 2, -1)),
    )
    info = {"kind": "within_group", "seed": seed, "sizes": values}
    return _from_parts(arr, part, info)


def groups_from_sources(
    sources: Sequence[str | None], atomic_numbers: Sequence[Sequence[int] | np.ndarray]
) -> list[str]:
    """Group key (molecule) per record, for :func:`group_split` / :func:`within_group_split`.

    The key is the molecule part of our ``source`` strings, the text before the first ``/``
    (``"water#0/copy3"`` -> ``"water#0"``). Records without a source (raw QH9 files) fall back
    to their Hill formula, which lumps all isomers of one formula into one group: safe against
    leaking a molecule across parts, but coarser than molecule identity (QM9 holds thousands of
    isomers of some formulas). Raw QH9-dynamic's own molecule id column is a better key where
    available.
    """
    if len(sources) != len(atomic_numbers):
        raise ValueError(f"{len(sources)} sources but {len(atomic_numbers)} atomic-number lists")
    return [
        src.split("/", 1)[0] if src else formula(np.asarray(z))
        for src, z in zip(sources, atomic_numbers)
    ]
