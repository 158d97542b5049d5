"""Files: atomic writes, checks of output paths, and settings files read into a mapping.

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
from collections.abc import Hashable, Iterator
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


def not_found(path: str | Path, what: str) -> str:
    """``"PATH: no such WHAT"``, or ``"PATH: a folder, not a WHAT"`` when it is one."""
    return f"{path}: a folder, not a {what}" if Path(path).is_dir() else f"{path}: no such {what}"


def check_output_dir(path: str | Path, what: str = "--out", file: bool = False) -> None:
    """Refuse, before any work, an output folder (or, with ``file``, the folder of an output
    file) that cannot be made: an existing file, or a path under one.

    Raises:
        ConfigError: naming the option and the file in the way.
    """
    path = Path(path)
    for folder in path.parents if file else (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {folder}, which is"
                raise ConfigError(f"{what} {path}: {where} a file, not a folder")
            return


def check_outputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]):
    """Refuse, before any work, an output file that is one of the ``inputs`` or another output
    (it would be overwritten), or whose folder cannot be made; ``outputs`` and ``inputs`` map
    an option name (``--json``) to its path (None: not given).

    Raises:
        ConfigError: naming both options.
    """
    seen: dict[Path, str] = {}
    for name, path in inputs.items():
        if path is not None:
            seen.setdefault(Path(path).resolve(), name)
    for name, path in outputs.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise ConfigError(f"{name} {path} is also {seen[key]}: it would be overwritten")
        seen[key] = name
        check_output_dir(path, name, file=True)
        if key.is_dir():
            raise ConfigError(f"{name} {path}: is a folder, not a file")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last
    silently, so a typo'd duplicate would change a run without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the safe loader's own check names an unhashable key
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    problem=f"line {line}: key {key!r} appears twice"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """``text`` as YAML, through the safe loader that refuses duplicate keys (a python tag is
    an error, never code).

    Raises:
        ConfigError: ``where: cannot parse: ...`` with the parser's message.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot parse: {' '.join(str(err).split())}") from None


def _unique_pairs(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key(s) {', '.join(map(repr, twice))} appear twice")
    return dict(pairs)


def read_settings(path: str | Path) -> dict:
    """The mapping in a YAML (``.yaml``/``.yml``), TOML or JSON settings file (a config or a
    recipe); an empty YAML file is ``{}``.

    Raises:
        ConfigError: missing, unparsable (the parser's message, with the line), a key given
            twice, a top level that is not a mapping, or another suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: config files are .yaml, .yml, .toml or .json")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            content = tomllib.loads(text)
        elif path.suffix == ".json":
            content = json.loads(text, object_pairs_hook=_unique_pairs)
    except (tomllib.TOMLDecodeError, ValueError) as err:  # UnicodeDecodeError included
        raise ConfigError(f"{path}: cannot parse: {' '.join(str(err).split())}") from None
    if path.suffix in (".yaml", ".yml"):
        content = parse_yaml(text, str(path)) or {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of settings, not a {type(content).__name__}"
        )
    return content
