"""Typer options shared by the commands that load a checkpoint (evaluate, predict, scf, ...)."""

from __future__ import annotations

from typing import Annotated

import typer

DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")]
EmaOption = Annotated[
    bool | None,
    typer.Option("--ema/--no-ema", help="EMA weights (default: when the run used EMA)."),
]
ProgressOption = Annotated[bool, typer.Option(help="Progress bar on stderr.")]
