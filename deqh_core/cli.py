"""The ``deqh`` command line.

Commands live in sub-apps (``deqh data ...``); add a new one with ``@data_app.command()`` or a new
``typer.Typer()`` registered with ``app.add_typer``. Import heavy modules (pyscf, torch) inside the
command functions so that ``deqh --help`` stays fast. Any ``DeqhError`` a command raises is shown
as one red ``error: ...`` line on stderr with exit code 1.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

from deqh_core.errors import DataError, DeqhError
from deqh_core.recipe import Recipe

_stderr = Console(stderr=True, soft_wrap=True, highlight=False)


class _Group(TyperGroup):
    """Root command group: turns a ``DeqhError`` from any command into a one-line message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeqhError as err:
            _stderr.print(f"error: {err}", style="red", markup=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="deqh",
    help="Deep-equilibrium Hamiltonian solvers: data, training and evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Make and inspect Hamiltonian data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
backbones_app = typer.Typer(help="List and check the registered backbones.")
app.add_typer(backbones_app, name="backbones")
checkpoint_app = typer.Typer(help="Inspect and convert checkpoints.", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")

_DEFAULT = {name: field.default for name, field in Recipe.model_fields.items()}


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
        msgs = [
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors()
        ]
        raise DataError("; ".join(msgs)) from None


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
    xc: Annotated[str, typer.Option(help="PySCF functional (b3lyp5 = QH9's B3LYP).")] = _DEFAULT[
        "xc"
    ],
    basis: Annotated[str, typer.Option(help="PySCF basis set name.")] = _DEFAULT["basis"],
    grid_level: Annotated[int, typer.Option(help="PySCF DFT grid level, 0-9.")] = _DEFAULT[
        "grid_level"
    ],
    conv_tol: Annotated[float, typer.Option(help="SCF energy tolerance, Hartree.")] = _DEFAULT[
        "conv_tol"
    ],
    conv_tol_grad: Annotated[
        float, typer.Option(help="SCF orbital-gradient tolerance, Hartree.")
    ] = _DEFAULT["conv_tol_grad"],
    max_cycle: Annotated[
        int, typer.Option(help="SCF cycles before a molecule counts as failed.")
    ] = _DEFAULT["max_cycle"],
    charge: Annotated[int, typer.Option(help="Molecular charge, e.")] = _DEFAULT["charge"],
    spin: Annotated[
        int, typer.Option(help="2S = N_alpha - N_beta; only 0 (closed shell) for now.")
    ] = _DEFAULT["spin"],
    workers: Annotated[int, typer.Option(min=1, help="Processes, one molecule each.")] = 1,
    shard: Annotated[
        str | None,
        typer.Option(metavar="i/N", help="Label only the tasks with id % N == i.", callback=_shard),
    ] = None,
    store_overlap: Annotated[
        bool, typer.Option("--store-overlap", help="Also store the overlap matrix (bigger files).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Label molecules with PySCF into a QH9-schema SQLite file (resumable, shardable)."""
    from deqh_core.data.generate import build_tasks, generate, molecule_geometry, xyz_geometries

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
    summary = generate(
        tasks,
        out,
        recipe,
        workers=workers,
        shard=shard,
        progress=progress,
        store_overlap=store_overlap,
    )
    Console(highlight=False).print(
        f"{out}: wrote {summary.written}, failed {summary.failed}, "
        f"skipped {summary.skipped} already done (of {len(tasks)} tasks"
        f"{'' if shard is None else f', shard {shard[0]}/{shard[1]}'})"
    )
    if summary.failed and not summary.written:
        raise DataError(
            f"{out}: nothing could be labelled: all {summary.failed} molecule(s) failed (reasons "
            "in the file's 'failures' table)"
        )


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
    xc: Annotated[str, typer.Option(help="PySCF functional (b3lyp5 = QH9's B3LYP).")] = _DEFAULT[
        "xc"
    ],
    basis: Annotated[str, typer.Option(help="PySCF basis set name.")] = _DEFAULT["basis"],
    grid_level: Annotated[int, typer.Option(help="PySCF DFT grid level, 0-9.")] = _DEFAULT[
        "grid_level"
    ],
    conv_tol: Annotated[float, typer.Option(help="SCF energy tolerance, Hartree.")] = _DEFAULT[
        "conv_tol"
    ],
    conv_tol_grad: Annotated[
        float, typer.Option(help="SCF orbital-gradient tolerance, Hartree.")
    ] = _DEFAULT["conv_tol_grad"],
    max_cycle: Annotated[
        int, typer.Option(help="SCF cycles before a molecule counts as failed.")
    ] = _DEFAULT["max_cycle"],
    workers: Annotated[int, typer.Option(min=1, help="Processes, one molecule each.")] = 1,
    shard: Annotated[
        str | None,
        typer.Option(metavar="i/N", help="Only the ids with id % N == i.", callback=_shard),
    ] = None,
    store_overlap: Annotated[
        bool, typer.Option("--store-overlap", help="Also store the overlap matrix (bigger files).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Label QH9-stable molecules (QM9 geometries of the qm9pack package) with PySCF.

    Molecule id = QH9-stable id; QH9's recipe by default. Needs: pip install qm9pack
    """
    from deqh_core.data.generate import generate
    from deqh_core.data.qm9 import parse_ids, qh9_tasks, qm9_table, select_ids

    if out is None and not list_ids:
        raise DataError("give OUT.db to label into, or --list to print the selected ids")
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
    if list_ids:
        if shard is not None:
            selected = selected[selected % shard[1] == shard[0]]
        print("\n".join(map(str, selected.tolist())))
        return
    tasks = qh9_tasks(table, selected)
    summary = generate(
        tasks,
        out,
        recipe,
        workers=workers,
        shard=shard,
        progress=progress,
        store_overlap=store_overlap,
    )
    Console(highlight=False).print(
        f"{out}: wrote {summary.written}, failed {summary.failed}, "
        f"skipped {summary.skipped} already done (of {len(tasks)} QH9-stable molecules"
        f"{'' if shard is None else f', shard {shard[0]}/{shard[1]}'})"
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


@backbones_app.callback(invoke_without_command=True)
def backbones_list(ctx: typer.Context) -> None:
    """List every registered backbone with its capabilities and the package providing it."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from deqh_core.plugins import backbones

    table = Table(title="deqh backbones")
    for column in ("name", "reads H (--deq)", "reads S", "plugin", "package", "description"):
        table.add_column(column)
    for name, reg in backbones().items():
        caps = reg.spec.capabilities
        table.add_row(
            name,
            "yes" if caps.reads_h else "no",
            "yes" if caps.reads_s else "no",
            reg.plugin,
            reg.package,
            reg.spec.description,
        )
    Console(width=200).print(table)


@backbones_app.command("check")
def backbones_check(
    name: Annotated[str, typer.Argument(help="Registered backbone name.")],
    basis: Annotated[str, typer.Option(help="Basis set of the test molecules.")] = "def2-svp",
    seed: Annotated[int, typer.Option(help="Seed of weights, rotation and permutation.")] = 0,
    prior: Annotated[
        str, typer.Option(help="Check on top of a prior H0 too: none, 1e or minao.")
    ] = "none",
) -> None:
    """Run the conformance kit (equivariance, invariances, symmetry, batching, DEQ) on NAME."""
    from rich.table import Table

    from deqh_core.testing import check_backbone

    results = check_backbone(name, basis=basis, seed=seed, raise_on_failure=False, prior=prior)
    table = Table(title=f"deqh backbones check {name}")
    for column in ("mode", "check", "result", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r.mode, r.check, "[green]pass" if r.passed else "[red]FAIL", r.detail)
    Console(width=200).print(table)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@checkpoint_app.command("info")
def checkpoint_info(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (best.pt / last.pt).")],
) -> None:
    """Show what a checkpoint records: model, step, dataset, labels' recipe, training domain."""
    import json

    from deqh_core.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    info = {
        "step": state.get("step"),
        "format": state.get("format", 1),
        "model": state["describe"],
        "data": {k: v for k, v in (state.get("data") or {}).items() if k != "file_recipe"},
        "domain": state.get("domain"),
    }
    Console(highlight=False).print(json.dumps(info, indent=1, default=str), markup=False)


@checkpoint_app.command("upgrade")
def checkpoint_upgrade(
    source: Annotated[Path, typer.Argument(help="Checkpoint of an older deqh (trusted).")],
    target: Annotated[Path, typer.Argument(help="New file to write.")],
) -> None:
    """Convert a checkpoint of an older deqh so that it loads without unpickling.

    Reading SOURCE unpickles it, which runs whatever code it holds: only for files you trust.
    """
    from deqh_core.checkpoint import upgrade_checkpoint

    state = upgrade_checkpoint(source, target)
    Console(highlight=False).print(
        f"{target}: step {state.get('step')}, loads with weights_only=True", markup=False
    )


@app.command("train")
def train_command(
    backbone: Annotated[
        str | None, typer.Option(help="Registered backbone (deqh backbones).")
    ] = None,
    deq: Annotated[
        bool | None, typer.Option("--deq/--no-deq", help="DEQ Hamiltonian solver (DEQHNet).")
    ] = None,
    overlap: Annotated[
        bool | None,
        typer.Option(
            "--overlap/--no-overlap", help="Feed S's diagonal reduction (default: = --deq)."
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(help="Learn the correction to PySCF's H0: none, 1e or minao (see docs)."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="cpu-small, md17-water, ..., qh9-stable-id (see docs).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML/TOML config file.", dir_okay=False)
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset file (default: bundled).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Molecules per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or float64.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights and batch order.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the resolved configuration as YAML and exit."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Any config field, e.g. optim.ema=true."),
    ] = None,
) -> None:
    """Train a backbone (as predictor, or with --deq as DEQ solver) on a Hamiltonian dataset."""
    from rich.table import Table

    from deqh_core.config import PRESETS, ConfigError, load_config, parse_override, read_config_file
    from deqh_core.train import resumed_config, train

    flags: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is not None:
            flags.setdefault(section, {})[key] = value

    put("model", "backbone", backbone)
    put("model", "deq", deq)
    put("model", "overlap", overlap)
    put("model", "prior", prior)
    put("data", "path", str(data) if data else None)
    put("data", "batch_size", batch_size)
    put("optim", "max_steps", steps)
    put("optim", "lr", lr)
    put("run", "device", device)
    put("run", "dtype", dtype)
    put("run", "seed", seed)
    put("run", "progress", progress)
    overrides = [parse_override(text) for text in set_ or []]
    if resume:
        # the run's own saved config, continued in --out (never where the checkpoint was
        # written first); requested changes are applied where sound, else refused
        run_dir = out or load_config(preset, config).run.out
        if any("out" in r.get("run", {}) for r in overrides):
            raise ConfigError("with --resume the run directory is --out; drop --set run.out")
        files = [dict(PRESETS[preset])] if preset in PRESETS else []
        files += [read_config_file(config)] if config else []
        for f in files:  # the run directory is --out, not what the preset or file says
            f["run"] = {k: v for k, v in f.get("run", {}).items() if k != "out"}
        requested = [*files, *overrides, flags]
        cfg, notes = resumed_config(run_dir, requested)
        for note in notes:
            _stderr.print(f"resume: {note}", markup=False)
    else:
        put("run", "out", str(out) if out else None)
        cfg = load_config(preset, config, *overrides, flags)
    if print_config:
        import yaml

        from deqh_core.config import resolved

        typer.echo(yaml.safe_dump(resolved(cfg), sort_keys=False), nl=False)
        return
    result = train(cfg, resume=resume)
    table = Table(title=f"deqh train: {cfg.model.backbone}{' --deq' if cfg.model.deq else ''}")
    table.add_column("validation (step)")
    table.add_column("H MAE all, 1e-6 Ha")
    table.add_column("diag")
    table.add_column("off-diag")
    table.add_column("DEQ nfe")
    table.add_column("DEQ |f(H)-H|, Ha")
    for name, m in (("last", result.last), ("best", result.best)):
        table.add_row(
            f"{name} ({m['step']})",
            f"{m['mae_all'] * 1e6:.1f}",
            f"{m['mae_diag'] * 1e6:.1f}",
            f"{m['mae_off'] * 1e6:.1f}",
            f"{m['deq_nfe']:.1f}" if "deq_nfe" in m else "-",
            f"{m['deq_residual']:.1e}" if "deq_residual" in m else "-",
        )
    Console().print(table)
    Console().print(f"{result.parameters:,} parameters; checkpoints in {result.out}/")


# -- DFT acceleration and convergence analyses (deqh_core.scf, deqh_core.analyze) -------------
from deqh_core.analyze import analyze_app  # noqa: E402
from deqh_core.scf import scf_command  # noqa: E402

app.command("scf")(scf_command)
app.add_typer(analyze_app, name="analyze")

# -- evaluation, prediction and the ablation (deqh_core.evaluate, .predict, .ablate) -----------
from deqh_core.ablate import ablate_command  # noqa: E402
from deqh_core.evaluate import evaluate_command  # noqa: E402
from deqh_core.predict import predict_command  # noqa: E402

app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("ablate")(ablate_command)
