"""``deqh checkpoint``: show what a checkpoint records; convert one of an older deqh."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deqh_core.cli.options import ModelArgument

checkpoint_app = typer.Typer(help="Inspect and convert checkpoints.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("info")
def checkpoint_info(
    checkpoint: ModelArgument,
) -> None:
    """Show what a checkpoint records: model, step, dataset, labels' recipe, training domain
    (and, for a released or shipped model, its card: name, training data, license)."""
    # imported when the command runs, so that `deqh --help` stays fast
    import json

    from deqh_core.inference.pretrained import resolve_checkpoint
    from deqh_core.training.checkpoint import load_checkpoint

    state = load_checkpoint(resolve_checkpoint(checkpoint))
    info = {
        **({"card": state["card"]} if state.get("card") else {}),
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


@checkpoint_app.command("release")
def checkpoint_release(
    source: Annotated[Path, typer.Argument(help="Checkpoint of deqh train (best.pt).")],
    target: Annotated[Path, typer.Argument(help="New file to write.")],
    name: Annotated[str, typer.Option(help="The model's name.")],
    training_data: Annotated[
        str, typer.Option(help="What it was trained on (dataset, molecules, recipe).")
    ],
    license: Annotated[str, typer.Option(help="License of the weights.")] = "MIT",
    note: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE facts for its card (repeatable).")
    ] = None,
) -> None:
    """Write a checkpoint for use, not for resuming: the weights its validation used, the
    config and training domain, and a card (name, training data, license); no optimiser, EMA
    or random state. This is how the shipped models are made (docs/pretrained.md)."""
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.training.checkpoint import release_checkpoint
    from deqh_core.util.errors import ConfigError

    card = {"name": name, "training_data": training_data, "license": license}
    for item in note or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--note {item!r} is not of the form KEY=VALUE")
        card[key.strip()] = value.strip()
    release_checkpoint(source, target, card)
    size = target.stat().st_size / 1e6
    Console(highlight=False).print(f"{target}: {size:.2f} MB, card {card}", markup=False)
