"""Label generator: geometries in, converged PySCF Fock matrices out, in a QH9-schema file.

Inputs (xyz frames, ASE molecule names) become a deterministic task list, optionally with
thermal perturbations. Every task has a global id (its index in the full list), so shards of one
list can be generated on different machines and merged, and a killed run resumes without
recomputing anything already in the file.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.collections import g2

from deqh_core.ao.basis import element_shells
from deqh_core.data.recipe import Recipe, check_engine, minao_density, to_host
from deqh_core.data.store import HamiltonianDB, MoleculeRecord
from deqh_core.data.xyz import read_xyz
from deqh_core.util.cluster import Lost
from deqh_core.util.errors import DataError
from deqh_core.util.parallel import map_unordered
from deqh_core.util.progress import tracked

# pyscf and deqh_core.ao.basis (which pulls in e3nn/torch) are imported inside the functions that
# need them, so that importing this module (e.g. for the CLI's --help) stays fast.

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Geometry:
    """One input geometry: ``atomic_numbers`` ``[n]``, ``positions`` ``[n, 3]`` Å; ``name``
    says where it came from, e.g. ``"water.xyz#12"`` or ``"H2O#0"``."""

    name: str
    atomic_numbers: np.ndarray
    positions: np.ndarray


@dataclass
class Task:
    """One molecule to label. ``id`` is its index in the full (unsharded) task list."""

    id: int
    source: str  # e.g. "water.xyz#12/copy3"
    atomic_numbers: np.ndarray  # [n] int64
    positions: np.ndarray  # [n, 3] float64, Å


@dataclass
class Failure:
    """A molecule whose SCF did not converge; recorded in ``failures``, never as a label."""

    id: int
    source: str
    reason: str
    n_cycles: int | None


@dataclass
class Summary:
    """What one ``generate`` call did with the tasks of its shard."""

    written: int
    failed: int
    skipped: int  # already in the file (written or failed) before this call


def xyz_geometries(path: str | Path) -> list[Geometry]:
    """Every frame of an xyz file, named ``"<file name>#<frame index>"``."""
    name = Path(path).name
    return [
        Geometry(f"{name}#{k}", f.atomic_numbers, f.positions) for k, f in enumerate(read_xyz(path))
    ]


def molecule_geometry(name: str) -> Geometry:
    """The ASE molecule ``name`` (``ase.build.molecule``: the G2 set and a few extras)."""

    try:
        atoms = molecule(name)
    except KeyError:
        close = difflib.get_close_matches(name, g2.names, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise DataError(
            f"unknown ASE molecule name {name!r} (names are case-sensitive, e.g. H2O, CH4, "
            f"C6H6).{hint} List them all with: python -c 'import ase.collections; "
            "print(ase.collections.g2.names)'"
        ) from None
    return Geometry(
        f"{name}#0",
        atoms.get_atomic_numbers().astype(np.int64),
        atoms.get_positions().astype(np.float64),
    )


def build_tasks(
    geometries: Sequence[Geometry], n_copies: int = 0, sigma: float = 0.0, seed: int = 0
) -> list[Task]:
    """The full task list: ``n_copies`` perturbed copies of every geometry, in input order.

    Each copy adds Gaussian noise of standard deviation ``sigma`` (Å) to every coordinate,
    drawn from ``default_rng([seed, id])``, so a task's geometry depends only on the seed and
    its id. With ``n_copies=0`` or ``sigma=0`` every geometry is one task, used as is.
    """
    if n_copies < 0 or sigma < 0 or seed < 0:
        raise DataError(f"need n_copies, sigma, seed >= 0, got {n_copies}, {sigma}, {seed}")
    perturb = n_copies > 0 and sigma > 0
    tasks: list[Task] = []
    for geom in geometries:
        for copy in range(n_copies if perturb else 1):
            k = len(tasks)
            pos = np.asarray(geom.positions, dtype=np.float64)
            if perturb:
                pos = pos + np.random.default_rng([seed, k]).normal(0.0, sigma, size=pos.shape)
            z = np.asarray(geom.atomic_numbers, dtype=np.int64)
            tasks.append(Task(k, f"{geom.name}/copy{copy}", z, pos))
    return tasks


def shard_tasks(tasks: Sequence[Task], shard: tuple[int, int] | None) -> list[Task]:
    """The tasks of shard ``(i, n)``: those with ``id % n == i``; all tasks for None."""
    if shard is None:
        return list(tasks)
    i, n = shard
    if not 0 <= i < n:
        raise DataError(f"shard {i}/{n}: need 0 <= i < N")
    return [t for t in tasks if t.id % n == i]


def check_tasks(tasks: Sequence[Task], recipe: Recipe) -> None:
    """Fail fast, before any SCF: every element must be in the basis and every molecule closed
    shell under the recipe's charge."""

    if recipe.spin != 0:
        raise DataError(
            f"spin={recipe.spin}: only closed-shell (spin=0) RKS labels are supported so far"
        )
    for z in sorted({int(z) for t in tasks for z in t.atomic_numbers}):
        element_shells(recipe.basis, z)
    for t in tasks:
        # ECP cores hold an even number of electrons, so this parity is the basis-independent one
        if (int(t.atomic_numbers.sum()) - recipe.charge) % 2:
            raise DataError(
                f"{t.source}: odd number of electrons at charge {recipe.charge}; only "
                "closed-shell molecules can be labelled (change --charge or drop the molecule)"
            )


def label(
    task: Task, recipe: Recipe | None = None, store_overlap: bool = False, engine: str = "pyscf"
) -> MoleculeRecord | Failure:
    """Run the recipe's RKS on one task, with PySCF or, ``engine="gpu4pyscf"``, on a GPU.

    Returns the record with the Fock matrix at the converged density (``[n_ao, n_ao]``, PySCF AO
    order, Hartree), total energy (Hartree), cycle count and wall time (s), and, when the SCF
    starts from minao, its first Fock matrix: the minao prior ``H0`` (same shape); the overlap
    only if ``store_overlap``. An SCF that does not converge (or breaks down numerically) gives a
    ``Failure``. Raises ``BasisError``/``DataError`` for inputs the recipe cannot handle.
    """
    recipe = recipe or Recipe()
    check_tasks([task], recipe)
    start = time.perf_counter()
    mol = _molecule(task, recipe)
    mf = recipe.rks(mol, engine)
    cycles = 0
    first: list[np.ndarray] = []
    minao = recipe.init_guess == "minao"
    fock_of = mf.get_fock

    def get_fock(*args, **kwargs):
        nonlocal cycles
        fock = fock_of(*args, **kwargs)
        if engine != "pyscf" and len(args) > 4:  # gpu4pyscf calls no callback: count its
            cycles += 1  # in-cycle Fock builds (given the cycle and DIIS), one per cycle
        if minao and not first:
            # PySCF's first get_fock call in kernel() is the Fock matrix of the minao density,
            # h1e + veff[D_minao], before any DIIS (from cycle 1), damping or level shift (the
            # recipe sets none): exactly the minao prior H0 = F[D_minao], kept at no cost
            first.append(to_host(fock))
        return fock

    def count(_env: dict) -> None:
        nonlocal cycles
        cycles += 1

    mf.get_fock = get_fock
    if engine == "pyscf":
        mf.callback = count
    # gpu4pyscf's own minao guess is not PySCF's (block-diagonal per atom): start it from
    # PySCF's, so that H0 and the SCF's path are those of the CPU labels
    dm0 = minao_density(mol) if minao and engine != "pyscf" else None
    try:
        mf.kernel(dm0=dm0)
    except MemoryError:
        raise
    except Exception as err:  # e.g. a singular overlap from atoms pushed together
        return Failure(task.id, task.source, f"SCF raised {type(err).__name__}: {err}", cycles)
    if not mf.converged:
        reason = f"SCF not converged in {cycles} cycles (max_cycle={recipe.max_cycle})"
        return Failure(task.id, task.source, reason, cycles)
    fock = to_host(fock_of())  # rebuilt from the converged density, without DIIS or damping
    return MoleculeRecord(
        id=task.id,
        atomic_numbers=task.atomic_numbers,
        positions=task.positions,
        hamiltonian=fock,
        overlap=to_host(mf.get_ovlp()) if store_overlap else None,
        energy=float(mf.e_tot),
        source=task.source,
        n_cycles=cycles,
        wall_time=time.perf_counter() - start,
        h0_minao=(first[0] + first[0].T) / 2 if first else None,
    )


def _molecule(task: Task, recipe: Recipe):
    try:
        return recipe.mole(task.atomic_numbers, task.positions)
    except RuntimeError as err:
        raise DataError(f"{task.source}: PySCF cannot build the molecule ({err})") from None


def generate(
    tasks: Sequence[Task],
    out_path: str | Path,
    recipe: Recipe | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    store_overlap: bool = False,
    scheduler: str | None = None,
    engine: str = "pyscf",
) -> Summary:
    """Label the tasks of ``shard`` into ``out_path``, resuming whatever is already there.

    Tasks already in the file (written or failed) are skipped. ``workers`` processes label
    molecules in parallel (one thread each), or the workers of a Dask cluster given as
    ``scheduler`` (:func:`deqh_core.util.cluster.connect`; a task whose workers kept dying is
    recorded as a failure); this process alone writes, each molecule in its own transaction as
    soon as it is done and only once, so a kill loses only the molecules in flight.
    ``engine="gpu4pyscf"`` runs each SCF on the worker's GPU (one molecule per worker).
    Refuses (``DataError``) a file labelled with another recipe, PySCF version or engine.
    """
    recipe = recipe or Recipe()
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    mine = shard_tasks(tasks, shard)
    check_tasks(mine, recipe)
    check_engine(engine)
    written = failed = 0
    with HamiltonianDB(out_path, "a") as db:
        db.set_recipe(recipe.as_meta(engine))
        done = db.done_ids()
        _check_same_tasks(db, [t for t in mine if t.id in done])
        todo = [t for t in mine if t.id not in done]
        label_bar = tracked(
            f"labelling {Path(out_path).name}",
            len(todo),
            progress,
            status="failed {task.fields[failed]}",
            failed=0,
        )
        with label_bar as advance:
            jobs = ((task, recipe, store_overlap, engine) for task in todo)
            for result in map_unordered(label, jobs, workers, scheduler):
                if isinstance(result, Lost):
                    task = result.task[0]
                    result = Failure(task.id, task.source, f"lost: {result.reason}", None)
                if result.id in done:  # a result delivered twice is committed once
                    continue
                done.add(result.id)
                if isinstance(result, Failure):
                    db.record_failure(result.id, result.source, result.reason, result.n_cycles)
                    failed += 1
                else:
                    db.write(result)
                    written += 1
                advance(failed=failed)
    return Summary(written=written, failed=failed, skipped=len(mine) - len(todo))


def _check_same_tasks(db: HamiltonianDB, done: list[Task]) -> None:
    """Spot-check that the file's finished molecules are the tasks with the same ids, i.e. that
    the run is resumed with the same inputs (ids are positions in the task list)."""
    labelled = set(db.ids())
    done = [t for t in done if t.id in labelled]
    for t in done[:: max(1, len(done) // 8)][:8]:
        stored = db.get(t.id)
        same = stored.source in (None, t.source) and np.allclose(stored.positions, t.positions)
        if not same:
            raise DataError(
                f"{db.path}: id {t.id} holds {stored.source!r}, but this task list has "
                f"{t.source!r} there; resume with the same inputs, copies and seed, or write "
                "to a new file"
            )
