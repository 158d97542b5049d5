"""Atomic file writes: a file deqh writes is either as it was or complete, never half-written.

The data goes to a temporary file in the destination's folder (same file system), is flushed
to disk, and then replaces the destination in one ``os.replace``; on any error the temporary
file is removed and the destination is untouched. Every file deqh writes for a user
(checkpoints, configs, splits, predictions, reports, caches) goes through here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends without an
    error (parent folders are created). ``mode`` is ``"w"`` (text) or ``"wb"``; ``kwargs`` go
    to ``open`` (e.g. ``newline=""`` for CSV)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name opened exclusively (not mkstemp, whose 0600 mode would stick to the file)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)
