"""``deqh ablate``: the paper's four variants trained and evaluated (Fig. 5; logic:
:mod:`deqh_core.experiments.ablate`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deqh_core.cli.options import DeviceOption, SplitName
from deqh_core.experiments.ablate import VARIANTS


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)


def ablate_command(
    preset: Annotated[
        str | None, typer.Option(help="Config preset shared by the variants (see deqh train).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML/TOML config file.", dir_okay=False)
    ] = None,
    backbone: Annotated[
        list[str] | None,
        typer.Option(
            help="Registered backbone (deqh backbones); repeatable: every backbone's variants "
            "in one table (default: qhnet)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimiser steps per variant.")] = None,
    minutes: Annotated[
        float | None, typer.Option(min=0.0, help="Wall-time budget per variant, minutes.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset file (default: bundled).")] = None,
    out: Annotated[Path, typer.Option(help="Ablation directory.")] = Path("runs/ablation"),
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these variants (repeatable; default: the paper's four): "
            + ", ".join(VARIANTS)
            + "."
        ),
    ] = None,
    prior: Annotated[
        list[str] | None,
        typer.Option(
            help="Also train every variant on this prior H0 (repeatable): none, 1e, minao "
            "(the correction in the Löwdin basis), or 1e-ao / minao-ao (in the AO basis)."
        ),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            min=1, help="Seeds per variant (run.seed + 0..N-1); the table gives mean ± s.e."
        ),
    ] = 1,
    split: Annotated[
        SplitName, typer.Option(help="Split the variants are evaluated on.")
    ] = SplitName.test,
    device: DeviceOption = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Any config field, e.g. optim.lr=1e-3."),
    ] = None,
) -> None:
    """Train and evaluate DEQHNet, DEQHNet w/o S, QHNet and QHNet w/ S (paper Fig. 5), and on
    request DEQHNet with full feedback, with priors and several seeds."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console
    from rich.table import Table

    from deqh_core.experiments.ablate import HEADER, LEFT, run_ablation
    from deqh_core.training.config import parse_override

    if minutes is not None and minutes <= 0:
        raise typer.BadParameter("--minutes must be positive")
    overrides = [parse_override(text) for text in set_ or []]
    run = {"device": device, "progress": progress}
    extra: dict = {"run": run}
    if data is not None:
        extra["data"] = {"path": str(data)}
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    result = run_ablation(
        preset,
        config,
        [*overrides, extra],
        backbone or ["qhnet"],
        steps,
        minutes,
        out,
        variant,
        split.value,
        log=lambda text: console.print(text, markup=False),
        priors=prior,
        seeds=seeds,
    )
    table = Table(title=f"deqh ablate: {', '.join(backbone or ['qhnet'])}")
    for k, column in enumerate(HEADER):
        table.add_column(column, justify="left" if k < LEFT else "right")
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"table: {result.markdown}\ncharts: {result.chart}, {out / 'ablation_time.png'}",
        markup=False,
    )
