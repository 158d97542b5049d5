"""Options, choices and consoles shared by the ``deqh`` commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stderr = Console(stderr=True, soft_wrap=True, highlight=False)
"""Errors, warnings and notes: stderr, one line each (never wrapped), no markup guessing."""


class SplitName(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


ModelArgument = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        help="Checkpoint of deqh train (best.pt / last.pt), or a shipped model's name (deqh "
        "models lists them, e.g. qh9-small).",
        dir_okay=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")]
EmaOption = Annotated[
    bool | None,
    typer.Option("--ema/--no-ema", help="EMA weights (default: when the run used EMA)."),
]
ProgressOption = Annotated[bool, typer.Option(help="Progress bar on stderr.")]
RecipeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--recipe",
        metavar="KEY=VALUE|FILE",
        help="Override the labels' recipe recorded in the checkpoint, e.g. xc=pbe, "
        "grid_level=4, or a JSON/YAML/TOML file of such keys (repeatable; printed).",
    ),
]
KeepGoingOption = Annotated[
    bool,
    typer.Option(
        "--keep-going",
        help="Exit 0 even when a DEQ did not converge for a molecule; accept atoms closer than "
        "0.5 Å.",
    ),
]
