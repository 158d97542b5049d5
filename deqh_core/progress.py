"""One look for every progress bar of deqh (rich, on stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(status: str, enabled: bool = True) -> Progress:
    """A bar with count, elapsed and remaining time, and a status text built from
    ``status`` (a format string over the task's fields, e.g. ``"failed {task.fields[failed]}"``).
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn(status),
        console=Console(stderr=True),
        disable=not enabled,
    )
