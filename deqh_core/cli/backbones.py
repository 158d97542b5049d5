"""``deqh backbones``: list the registered backbones and run the conformance kit on one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from deqh_core.util.errors import DeqhError

backbones_app = typer.Typer(help="List and check the registered backbones.")


def register(app: typer.Typer) -> None:
    app.add_typer(backbones_app, name="backbones")


@backbones_app.callback(invoke_without_command=True)
def backbones_list(ctx: typer.Context) -> None:
    """List every registered backbone with its capabilities and the package providing it."""
    if ctx.invoked_subcommand is not None:
        return
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    from deqh_core.plugins.manager import backbones

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
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    from deqh_core.plugins.testing import check_backbone

    if prior not in ("none", "1e", "minao"):
        raise DeqhError(f"--prior {prior!r}: not a prior (none, 1e or minao)")
    results = check_backbone(name, basis=basis, seed=seed, raise_on_failure=False, prior=prior)
    table = Table(title=f"deqh backbones check {name}")
    for column in ("mode", "check", "result", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r.mode, r.check, "[green]pass" if r.passed else "[red]FAIL", r.detail)
    Console(width=200).print(table)
    if not all(r.passed for r in results):
        raise typer.Exit(1)
