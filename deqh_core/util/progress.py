"""One look for every progress bar of deqh (rich, on stderr)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def tracked(
    description: str, total: int, enabled: bool = True, status: str = "", **fields
) -> Iterator[Callable[..., None]]:
    """Show a bar for ``total`` units of work; yields ``advance(n=1, **fields)``, which also
    updates the fields that ``status`` formats (e.g. ``status="failed {task.fields[failed]}"``,
    ``failed=0``)."""
    with progress_bar(status, enabled) as bar:
        task = bar.add_task(description, total=total, **fields)

        def advance(n: int = 1, **update) -> None:
            bar.update(task, advance=n, **update)

        yield advance
