"""``deqh checkpoint``: show what a checkpoint records; convert one of an older deqh."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

checkpoint_app = typer.Typer(help="Inspect and convert checkpoints.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("info")
def checkpoint_info(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (best.pt / last.pt).")],
) -> None:
    """Show what a checkpoint records: model, step, dataset, labels' recipe, training domain."""
    # imported when the command runs, so that `deqh --help` stays fast
    import json

    from deqh_core.training.checkpoint import load_checkpoint

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
    source: Annotated[Path, typer.Argument(help="Checkpoint of an older deqh.")],
    target: Annotated[Path, typer.Argument(help="New file to write.")],
) -> None:
    """Convert a checkpoint of an older deqh (before format 2) into the current format.

    SOURCE is read allowing only the numpy types of the random state older checkpoints
    pickled; a file that needs anything else is refused and nothing of it runs.
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.training.checkpoint import upgrade_checkpoint

    state = upgrade_checkpoint(source, target)
    Console(highlight=False).print(
        f"{target}: step {state.get('step')}, loads with weights_only=True", markup=False
    )
