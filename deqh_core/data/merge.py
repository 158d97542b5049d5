"""Merge dataset files (e.g. the shards of ``deqh data qh9 --shard i/N``) into one.

Every input must hold labels of one recipe (basis, functional, grid, tolerances, PySCF
version: the ``meta`` recipe) in deqh's native schema. A molecule id found in several inputs
is kept once (its first copy) when every copy has the same atoms and positions and labels
within :data:`SAME_LABEL`, and refused otherwise; nothing is written then. Failures (the
``failures`` table) are carried over unless another input labelled the molecule. The result is
written to a temporary file beside ``out`` and renamed into place: a killed merge leaves no
partial file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deqh_core.data.store import HamiltonianDB, MoleculeRecord
from deqh_core.util.errors import DataError
from deqh_core.util.files import not_found


@dataclass
class MergeSummary:
    """What a merge did: molecules written, identical copies dropped, failures kept (and
    those dropped because another input labelled the molecule), per input file."""

    out: Path
    written: int = 0
    duplicates: int = 0
    failures: int = 0
    failures_labelled: int = 0
    per_input: dict[str, int] = field(default_factory=dict)


SAME_LABEL = 1e-5
"""Hartree: two copies of one molecule (same atoms, same positions to the bit) whose labels
differ by at most this much are the same label computed twice (SCF convergence and
floating-point noise of one recipe, e.g. on two machines); more is a conflict."""


def _geometry(record: MoleculeRecord) -> str:
    """A fingerprint of a record's atoms and positions (their exact bytes)."""
    h = hashlib.sha256(np.ascontiguousarray(record.atomic_numbers, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(record.positions, dtype="<f8").tobytes())
    return h.hexdigest()


def merge(out: str | Path, inputs: Sequence[str | Path]) -> MergeSummary:
    """Merge ``inputs`` into the new file ``out`` (see the module doc).

    Raises:
        DataError: ``out`` exists, an input is missing, unreadable, of another schema or
            recipe, given twice, or two inputs hold different data under one molecule id
            (naming both files and the id).
    """
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: exists; merge into a new file (nothing was overwritten)")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("no input files to merge")
    for p in paths:
        if not p.is_file():
            raise DataError(not_found(p, "dataset file"))
    twice = {p.resolve() for p in paths if sum(q.resolve() == p.resolve() for q in paths) > 1}
    if twice:
        raise DataError(f"{sorted(twice)[0]}: given twice")
    recipe = _common_recipe(paths)
    # pass 1: find every conflict before anything is written
    seen: dict[int, tuple[str, Path]] = {}
    for path in paths:
        with HamiltonianDB(path) as db:
            for record in db:
                if record.id not in seen:
                    seen[record.id] = (_geometry(record), path)
                    continue
                first, where = seen[record.id]
                if _geometry(record) != first:
                    raise DataError(
                        f"molecule id {record.id} has another geometry in {path} than in "
                        f"{where}; nothing was written"
                    )
                with HamiltonianDB(where) as other:
                    diff = np.abs(other.get(record.id).hamiltonian - record.hamiltonian).max()
                if diff > SAME_LABEL:
                    raise DataError(
                        f"molecule id {record.id}: its labels in {where} and {path} differ by "
                        f"up to {diff:.1e} Ha (more than {SAME_LABEL:g}); nothing was written"
                    )
    # pass 2: write each molecule once, into a temporary file renamed into place
    summary = MergeSummary(out)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with HamiltonianDB(tmp, "a") as target:
            if recipe is not None:
                target.set_recipe(recipe)
            written: set[int] = set()
            for path in paths:
                count = 0
                with HamiltonianDB(path) as db:
                    for record in db:
                        if record.id in written:
                            summary.duplicates += 1
                            continue
                        record.h0_minao = db.prior(record.id, "minao")  # with its label
                        target.write(record)
                        written.add(record.id)
                        count += 1
                    summary.per_input[str(path)] = count
            for path in paths:
                with HamiltonianDB(path) as db:
                    for mol_id, reason in db.failures().items():
                        if mol_id in written:
                            summary.failures_labelled += 1
                            continue
                        target.record_failure(mol_id, None, reason)
                        summary.failures += 1
            summary.written = len(written)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _common_recipe(paths: list[Path]) -> dict | None:
    """The inputs' common recipe (None if none records one)."""
    recipe = None
    for i, path in enumerate(paths):
        with HamiltonianDB(path) as db:
            if db.raw_dynamic:  # its rows are keyed by row number, not by molecule id
                raise DataError(
                    f"{path}: a raw QH9-dynamic file (ids are row numbers); merge deqh's own "
                    "files, e.g. the shards of deqh data qh9 / generate"
                )
            this = db.recipe
        if i == 0:
            recipe = this
        elif this != recipe:
            keys = set(recipe or {}) | set(this or {})
            differ = sorted(k for k in keys if (recipe or {}).get(k) != (this or {}).get(k))
            raise DataError(
                f"{path}: labelled with another recipe than {paths[0]} (differs in "
                f"{', '.join(differ) or 'whether one is recorded'}); nothing was written"
            )
    return recipe
