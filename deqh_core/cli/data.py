"""``deqh data``: make and inspect Hamiltonian data sets (PySCF labels, QH9, checks)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from deqh_core.cli.options import stderr
from deqh_core.data.recipe import Recipe
from deqh_core.util.cluster import SCHEDULER_HELP
from deqh_core.util.errors import DataError, validation_message
from deqh_core.util.files import check_output_dir

data_app = typer.Typer(help="Make and inspect Hamiltonian data sets.", no_args_is_help=True)

_DEFAULT = {name: field.default for name, field in Recipe.model_fields.items()}
# the labelling recipe's options, shared by `data generate` and `data qh9`
XcOption = Annotated[str, typer.Option(help="PySCF functional (b3lyp5 = QH9's B3LYP).")]
BasisOption = Annotated[str, typer.Option(help="PySCF basis set name.")]
GridOption = Annotated[int, typer.Option(help="PySCF DFT grid level, 0-9.")]
ConvTolOption = Annotated[float, typer.Option(help="SCF energy tolerance, Hartree.")]
ConvTolGradOption = Annotated[float, typer.Option(help="SCF orbital-gradient tolerance, Hartree.")]
MaxCycleOption = Annotated[int, typer.Option(help="SCF cycles before a molecule counts as failed.")]
# and the generator's
WorkersOption = Annotated[int, typer.Option(min=1, help="Processes, one molecule each.")]
StoreOverlapOption = Annotated[
    bool, typer.Option("--store-overlap", help="Also store the overlap matrix (bigger files).")
]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]
SchedulerOption = Annotated[str | None, typer.Option(metavar="ADDRESS", help=SCHEDULER_HELP)]
EngineOption = Annotated[
    str,
    typer.Option(
        metavar="pyscf|gpu4pyscf",
        help="Where each SCF runs: pyscf (CPU) or gpu4pyscf (the worker's CUDA GPU; pip install "
        "gpu4pyscf-cuda12x). Labels of the two are never mixed in one file.",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(part) for part in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not of the form i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"{value!r}: need 0 <= i < N, e.g. 0/4 ... 3/4")
    return i, n


def _recipe(**fields) -> Recipe:
    try:
        return Recipe(**fields)
    except ValidationError as err:
        raise DataError(validation_message(err, flags=True)) from None


@data_app.command("generate")
def data_generate(
    out: Annotated[
        Path,
        typer.Argument(
            metavar="OUT.db",
            help="SQLite file to write; an existing one is resumed.",
            dir_okay=False,
        ),
    ],
    xyz: Annotated[
        list[Path] | None,
        typer.Option(
            "--xyz",
            metavar="FILE",
            help="xyz file; every frame is a molecule (repeatable).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    molecule: Annotated[
        list[str] | None,
        typer.Option(
            "--molecule", metavar="NAME", help="ASE molecule name, e.g. H2O (repeatable)."
        ),
    ] = None,
    copies: Annotated[
        int, typer.Option(min=0, help="Perturbed copies per geometry; 0 uses each as is.")
    ] = 0,
    sigma: Annotated[
        float, typer.Option(min=0.0, help="Std. dev. of the Gaussian noise per coordinate, Å.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the perturbations.")] = 0,
    xc: XcOption = _DEFAULT["xc"],
    basis: BasisOption = _DEFAULT["basis"],
    grid_level: GridOption = _DEFAULT["grid_level"],
    conv_tol: ConvTolOption = _DEFAULT["conv_tol"],
    conv_tol_grad: ConvTolGradOption = _DEFAULT["conv_tol_grad"],
    max_cycle: MaxCycleOption = _DEFAULT["max_cycle"],
    charge: Annotated[int, typer.Option(help="Molecular charge, e.")] = _DEFAULT["charge"],
    spin: Annotated[
        int, typer.Option(help="2S = N_alpha - N_beta; only 0 (closed shell) for now.")
    ] = _DEFAULT["spin"],
    workers: WorkersOption = 1,
    shard: Annotated[
        str | None,
        typer.Option(metavar="i/N", help="Label only the tasks with id % N == i.", callback=_shard),
    ] = None,
    scheduler: SchedulerOption = None,
    engine: EngineOption = "pyscf",
    store_overlap: StoreOverlapOption = False,
    progress: ProgressOption = True,
) -> None:
    """Label molecules with PySCF into a QH9-schema SQLite file (resumable, shardable)."""
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.data.generate import build_tasks, molecule_geometry, xyz_geometries

    recipe = _recipe(
        xc=xc,
        basis=basis,
        grid_level=grid_level,
        conv_tol=conv_tol,
        conv_tol_grad=conv_tol_grad,
        max_cycle=max_cycle,
        charge=charge,
        spin=spin,
    )
    geometries = [g for path in xyz or [] for g in xyz_geometries(path)]
    geometries += [molecule_geometry(name) for name in molecule or []]
    if not geometries:
        raise DataError("nothing to label: give at least one --xyz FILE or --molecule NAME")
    tasks = build_tasks(geometries, n_copies=copies, sigma=sigma, seed=seed)
    _label(tasks, "tasks", out, recipe, workers, shard, progress, store_overlap, scheduler, engine)


class QH9Split(StrEnum):
    stable_id = "stable-id"
    stable_ood = "stable-ood"


class QH9Part(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


@data_app.command("qh9")
def data_qh9(
    out: Annotated[
        Path | None,
        typer.Argument(
            metavar="OUT.db",
            help="SQLite file to write; an existing one is resumed. Not needed with --list.",
            dir_okay=False,
        ),
    ] = None,
    split: Annotated[
        QH9Split, typer.Option(help="stable-id: random 80/10/10; stable-ood: by atom count.")
    ] = QH9Split.stable_id,
    part: Annotated[QH9Part, typer.Option(help="Part of the split to select.")] = QH9Part.all,
    max_atoms: Annotated[
        int | None, typer.Option(min=1, help="Only molecules with at most this many atoms.")
    ] = None,
    ids: Annotated[
        str | None,
        typer.Option(
            metavar="IDS", help="Only these QH9-stable ids: a comma list of ids and ranges a-b."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first K selected ids (ascending).")
    ] = None,
    list_ids: Annotated[
        bool,
        typer.Option("--list", help="Print the selected QH9-stable ids, one a line; label none."),
    ] = False,
    xyz: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.xyz",
            help="Write the selected molecules' QM9 geometries to one multi-frame xyz file "
            "(comment: QH9-stable id, QM9 source), for deqh predict / scf; label none.",
            dir_okay=False,
        ),
    ] = None,
    xc: XcOption = _DEFAULT["xc"],
    basis: BasisOption = _DEFAULT["basis"],
    grid_level: GridOption = _DEFAULT["grid_level"],
    conv_tol: ConvTolOption = _DEFAULT["conv_tol"],
    conv_tol_grad: ConvTolGradOption = _DEFAULT["conv_tol_grad"],
    max_cycle: MaxCycleOption = _DEFAULT["max_cycle"],
    workers: WorkersOption = 1,
    shard: Annotated[
        str | None,
        typer.Option(metavar="i/N", help="Only the ids with id % N == i.", callback=_shard),
    ] = None,
    scheduler: SchedulerOption = None,
    engine: EngineOption = "pyscf",
    store_overlap: StoreOverlapOption = False,
    progress: ProgressOption = True,
) -> None:
    """Label QH9-stable molecules (QM9 geometries of the qm9pack package) with PySCF.

    Molecule id = QH9-stable id; QH9's recipe by default. Needs: pip install qm9pack
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.data.qm9 import parse_ids, qh9_tasks, qm9_table, select_ids

    if out is None and not list_ids and xyz is None:
        raise DataError(
            "give OUT.db to label into, --list to print the selected ids or --xyz FILE to write "
            "their geometries"
        )
    recipe = _recipe(
        xc=xc,
        basis=basis,
        grid_level=grid_level,
        conv_tol=conv_tol,
        conv_tol_grad=conv_tol_grad,
        max_cycle=max_cycle,
    )
    table = qm9_table()
    wanted = None if ids is None else parse_ids(ids)
    selected = select_ids(table.n_atoms, split, part, max_atoms, wanted, limit)
    if list_ids or xyz is not None:
        if shard is not None:
            selected = selected[selected % shard[1] == shard[0]]
        if xyz is not None:
            _write_geometries(table, selected, xyz)
        if list_ids:
            print("\n".join(map(str, selected.tolist())))
        return
    tasks = qh9_tasks(table, selected)
    what = "QH9-stable molecules"
    _label(tasks, what, out, recipe, workers, shard, progress, store_overlap, scheduler, engine)


def _write_geometries(table, selected, path: Path) -> None:
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.ao.basis import symbol
    from deqh_core.data.xyz import Frame, write_xyz

    check_output_dir(path, "--xyz", file=True)
    frames = []
    for i in selected.tolist():
        z, pos = table.geometry(i)
        comment = f"qh9-stable:{i} {table.source(i)}"
        frames.append(Frame([symbol(int(a)) for a in z], z, pos, comment))
    write_xyz(path, frames)
    stderr.print(f"{path}: {len(frames)} molecule(s)")


def _label(
    tasks, what, out, recipe, workers, shard, progress, store_overlap, scheduler, engine
) -> None:
    """Run the label generator, print its summary, and fail when nothing could be labelled."""
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.data.generate import generate

    summary = generate(
        tasks,
        out,
        recipe,
        workers=workers,
        shard=shard,
        progress=progress,
        store_overlap=store_overlap,
        scheduler=scheduler,
        engine=engine,
    )
    Console(highlight=False).print(
        f"{out}: wrote {summary.written}, failed {summary.failed}, "
        f"skipped {summary.skipped} already done (of {len(tasks)} {what}"
        f"{'' if shard is None else f', shard {shard[0]}/{shard[1]}'})"
    )
    if summary.failed and not summary.written:
        raise DataError(
            f"{out}: nothing could be labelled: all {summary.failed} molecule(s) failed (reasons "
            "in the file's 'failures' table)"
        )


@data_app.command("merge")
def data_merge(
    out: Annotated[Path, typer.Argument(metavar="OUT.db", help="New file to write.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(metavar="IN.db...", help="Files to merge, e.g. the shards of one run."),
    ],
) -> None:
    """Merge dataset files (e.g. shards of deqh data qh9 --shard i/N) into one new file.

    The inputs must share one recipe. A molecule in several inputs is kept once if its copies
    are identical, and refused (nothing written) if they differ; failures are carried over
    unless another input labelled the molecule. Check the result with deqh data check OUT.
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.data.merge import merge

    summary = merge(out, inputs)
    parts = ", ".join(f"{Path(p).name}: {n}" for p, n in summary.per_input.items())
    Console(highlight=False, soft_wrap=True).print(
        f"{out}: wrote {summary.written} molecule(s) ({parts}); dropped {summary.duplicates} "
        f"identical duplicate(s); kept {summary.failures} failure(s), dropped "
        f"{summary.failures_labelled} failure(s) another input labelled",
        markup=False,
    )


@data_app.command("prior")
def data_prior(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="Dataset file.", dir_okay=False)],
    kind: Annotated[str, typer.Option(help="Prior: minao (one Fock build) or 1e.")] = "minao",
    basis: Annotated[
        str | None, typer.Option(help="Basis of an ASE/SchNOrb file (default def2-svp).")
    ] = None,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    engine: EngineOption = "pyscf",
    progress: ProgressOption = True,
) -> None:
    """Add the prior H0 of every molecule to FILE, with its labels' recipe.

    A QH9-schema file (QH9's own, or one of deqh's labelled before H0 was stored with the
    labels) gets it in its own prior table, which QH9's readers ignore; an ASE database
    (SchNOrb MD17) in deqh's cache. Resumable (each molecule committed on its own) and
    parallel (--workers, or a Dask cluster: --scheduler); training and evaluation then compute
    no H0.
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.data.domain import geometry_checksum
    from deqh_core.data.md17 import open_source
    from deqh_core.data.recipe import describe_recipe, labels_recipe
    from deqh_core.data.store import HamiltonianDB
    from deqh_core.solvers.prior import PRIORS, PriorCache

    if kind not in PRIORS[1:]:
        raise DataError(f"--kind {kind!r}: use {' or '.join(PRIORS[1:])}")
    reader = open_source(path, basis=basis)
    try:
        native = isinstance(reader, HamiltonianDB)
        recipe, note = labels_recipe(reader.recipe, basis or getattr(reader, "basis", "def2-svp"))
        structures = list(reader.structures())
    finally:
        reader.close()
    stderr.print(f"recipe: {describe_recipe(recipe)}" + (f" ({note})" if note else ""))
    cache = PriorCache(path, recipe, kind, geometry_checksum(structures))
    before = len(structures) - len(cache.missing(structures))
    done = cache.fill(
        structures, workers, progress, into_dataset=native, scheduler=scheduler, engine=engine
    )
    where = f"{path}'s prior table" if native else str(cache.path)
    lost = len(cache.missing(structures))
    Console(highlight=False, soft_wrap=True).print(
        f"{path}: {kind} H0 of {len(structures)} molecule(s) in {where}: computed {done}, "
        f"{before} were already stored"
        + (f"; {lost} lost with their Dask workers (run again to retry them)" if lost else ""),
        markup=False,
    )


@data_app.command("check")
def data_check(
    path: Annotated[
        Path | None,
        typer.Argument(help="QH9-schema or MD17 file; default: the bundled water/ethanol set."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Molecules per batch.")] = 16,
    scf_sample: Annotated[
        int, typer.Option(min=0, help="Molecules whose labels are re-checked with PySCF.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the split and the SCF sample.")] = 0,
) -> None:
    """Run the data pipeline end to end on a dataset and report what it finds."""
    # imported when the command runs, so that `deqh --help` stays fast
    import numpy as np
    from rich.table import Table

    from deqh_core.data.check import check_dataset
    from deqh_core.data.dataset import BUNDLED

    report = check_dataset(path or BUNDLED, batch_size, scf_sample, seed)
    recipe = report.recipe
    table = Table(title=f"deqh data check: {report.path}", show_header=False)
    table.add_row("molecules", f"{report.n_molecules}  (atoms: {report.atom_counts})")
    if recipe.get("xc"):
        table.add_row(
            "recipe",
            f"{recipe['xc']} / {recipe['basis']} / grid {recipe['grid_level']}, "
            f"conv_tol {recipe['conv_tol']:g}, PySCF {recipe.get('pyscf_version', '?')}",
        )
    if report.recipe_note:
        table.add_row("recipe", report.recipe_note)
    table.add_row("AO block irreps", report.irreps)
    table.add_row("random split 80/10/10", "/".join(map(str, report.split_sizes)))
    table.add_row(
        "labels symmetric",
        f"yes (max |M - Mᵀ| = {report.max_asymmetry:.1e})"
        if not report.asymmetric
        else f"NO: {len(report.asymmetric)} record(s)",
    )
    for mol_id, problem in list(report.asymmetric.items())[:10]:
        table.add_row(f"  molecule id {mol_id}", problem)
    table.add_row("blocks -> matrices", "exact" if report.roundtrip_exact else "MISMATCH")
    if report.homo:
        homo, gap = np.array(report.homo), np.array(report.gap)
        table.add_row("HOMO, Hartree", f"{homo.mean():.4f} ± {homo.std():.4f}")
        table.add_row("HOMO-LUMO gap, Hartree", f"{gap.mean():.4f} ± {gap.std():.4f}")
    for mol_id, residual in report.self_consistency.items():
        table.add_row(f"label {mol_id}: max|F[D(H)]-H|", f"{residual:.2e} Hartree")
    Console().print(table)
    if report.asymmetric:
        ids = ", ".join(map(str, list(report.asymmetric)[:10]))
        raise DataError(
            f"{report.path}: {len(report.asymmetric)} label(s) not symmetric (molecule id {ids}"
            f"{' ...' if len(report.asymmetric) > 10 else ''}); they cannot be trained on"
        )
    if not report.roundtrip_exact:
        raise typer.Exit(1)
