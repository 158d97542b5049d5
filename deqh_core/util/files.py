"""Files: atomic writes, and settings files read into a mapping.

A file deqh writes is either as it was or complete, never half-written.

The data goes to a temporary file in the destination's folder (same file system), is flushed
to disk, and then replaces the destination in one ``os.replace``; on any error the temporary
file is removed and the destination is untouched. Every file deqh writes for a user
(checkpoints, configs, splits, predictions, reports, caches) goes through here.
"""

from __future__ import annotations

import json
import os
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from deqh_core.util.errors import ConfigError


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


def read_settings(path: str | Path) -> Any:
    """The content of a YAML (``.yaml``/``.yml``), TOML or JSON settings file (a config or a
    recipe); an empty YAML file is ``{}``.

    Raises:
        ConfigError: missing, unparsable (the parser's message) or of another suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(path.read_text()) or {}
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    raise ConfigError(f"{path}: config files are .yaml, .yml, .toml or .json")
