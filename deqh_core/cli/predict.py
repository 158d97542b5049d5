"""``deqh predict``: H, orbitals and how far to trust them for new molecules (logic:
:mod:`deqh_core.inference.predict`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deqh_core.cli.options import (
    DeviceOption,
    EmaOption,
    KeepGoingOption,
    ModelArgument,
    ProgressOption,
    RecipeOption,
)
from deqh_core.util.errors import DeqhError
from deqh_core.util.files import check_output_dir

if TYPE_CHECKING:
    from deqh_core.inference.predict import Prediction


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)


def summary_table(predictions: list[Prediction], title: str, limit: int = 30):
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    from deqh_core.inference.predict import HARTREE_EV

    table = Table(title=title)
    for column in ("molecule", "formula", "atoms", "AOs", "HOMO, Ha", "LUMO, Ha", "gap, eV"):
        table.add_column(column, justify="left" if column in ("molecule", "formula") else "right")
    deq = any(p.deq_nstep is not None for p in predictions)
    check = any(p.commutator is not None for p in predictions)
    if deq:
        table.add_column("DEQ nstep", justify="right")
        table.add_column("residual, Ha", justify="right")
    if check:
        table.add_column("max|FDS-SDF|, Ha", justify="right")
    table.add_column("flags")
    for p in predictions[:limit]:
        row = [
            p.name,
            p.formula,
            str(len(p.atomic_numbers)),
            str(len(p.orbital_energies)),
            f"{p.homo:.4f}",
            f"{p.lumo:.4f}",
            f"{p.gap * HARTREE_EV:.3f}",
        ]
        if deq:
            row += [str(p.deq_nstep), f"{p.deq_residual:.1e}"]
        if check:
            row.append(f"{p.commutator.max_abs:.1e}" if p.commutator else "-")
        flags = (["UNCONVERGED"] if p.unconverged else []) + (["outside"] if p.warnings else [])
        row.append(", ".join(flags))
        table.add_row(*row)
    if len(predictions) > limit:
        table.caption = f"... and {len(predictions) - limit} more (see summary.csv)"
    return table


def report_flags(predictions: list[Prediction], console) -> tuple[int, int]:
    """Print every out-of-domain warning and unconverged DEQ; ``(n_unconverged, n_outside)``."""
    unconverged = [p for p in predictions if p.unconverged]
    outside = [p for p in predictions if p.warnings]
    for p in outside:
        for warning in p.warnings:
            console.print(f"warning: {p.source}: frame {p.frame}: {warning}", style="yellow")
    for p in unconverged:
        console.print(
            f"UNCONVERGED: {p.source}: frame {p.frame}: DEQ residual {p.deq_residual:.2e} Ha "
            "above the tolerance; the prediction is not a fixed point of the model",
            style="red",
        )
    return len(unconverged), len(outside)


def predict_command(
    checkpoint: ModelArgument,
    xyz: Annotated[
        list[Path],
        typer.Argument(help="xyz files; every frame is a molecule (Å).", dir_okay=False),
    ],
    out: Annotated[
        Path, typer.Option(help="Directory for the .npz files and summary.csv.", file_okay=False)
    ] = Path("predictions"),
    charge: Annotated[
        int | None,
        typer.Option(help="Molecular charge (closed shell), e; default: the labels'."),
    ] = None,
    recipe: RecipeOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Label-free check: ||FDS - SDF|| of each prediction (one Fock build)."
        ),
    ] = False,
    keep_going: KeepGoingOption = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also exit 1 when a molecule is outside the domain.")
    ] = False,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Molecules per batch.")] = 16,
    ema: EmaOption = None,
    progress: ProgressOption = True,
) -> None:
    """Predict H (PySCF AO order), orbital energies and HOMO/LUMO for new molecules.

    Every molecule is compared with the training data (elements it lacks are refused; other
    differences are warnings). A DEQ model's unconverged molecules make the command exit 1
    after writing everything, unless --keep-going.
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console
    from rich.markup import escape

    from deqh_core.data.recipe import describe_recipe
    from deqh_core.inference.predict import predict_frames, prepare, save_predictions

    check_output_dir(out)
    loaded, labels, source, frames, names = prepare(
        checkpoint, xyz, device, ema, recipe or (), close_ok=keep_going
    )
    err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
    err.print(f"recipe: {describe_recipe(labels)} (from {source})")
    if loaded.domain is None:
        err.print(
            f"warning: {checkpoint} records no training domain (written before format 2); "
            "molecules are not compared with the training data",
            style="yellow",
        )
    predictions = predict_frames(loaded, frames, batch_size, charge, progress, labels, check)
    save_predictions(predictions, names, out)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(summary_table(predictions, f"deqh predict: {escape(str(checkpoint))}"))
    console.print(
        f"{len(predictions)} molecule(s): .npz files and summary.csv in {out}/", markup=False
    )
    prior = [p.prior_seconds for p in predictions if p.prior_seconds is not None]
    if prior:
        console.print(
            f"H0 ({loaded.h0_kind}) built by PySCF: {sum(prior):.2f} s in all, "
            f"{max(prior):.2f} s at most per molecule (prior_s in summary.csv)",
            markup=False,
        )
    unconverged, outside = report_flags(predictions, err)
    if unconverged and not keep_going:
        raise DeqhError(
            f"{unconverged} of {len(predictions)} molecule(s) did not converge (results written, "
            "flagged in summary.csv); pass --keep-going to accept them"
        )
    if outside and strict:
        raise DeqhError(f"{outside} molecule(s) lie outside the training domain (--strict)")
