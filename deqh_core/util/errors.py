"""Exceptions raised by deqh. Every message names the file, record or option at fault."""

from __future__ import annotations


class DeqhError(Exception):
    """Base class of every error deqh raises on purpose."""


class BasisError(DeqhError, ValueError):
    """A basis set or element that PySCF cannot provide, or a matrix that does not fit it."""


class DataError(DeqhError, ValueError):
    """Malformed or inconsistent input data (xyz, database, labels)."""


class ConfigError(DeqhError, ValueError):
    """A configuration (or settings file) that does not validate; names the field and the source."""


class CheckpointError(DeqhError):
    """A checkpoint that is missing, corrupt, unsafe or belongs to another model/basis."""


def validation_message(err, prefix: str = "", flags: bool = False) -> str:
    """One line naming every field of a pydantic ``ValidationError`` and what is wrong with it:
    ``"optim.lr: Input should be greater than 0; ..."``. ``prefix`` goes before each field
    name; ``flags`` writes fields as command-line options (``--grid-level``)."""
    parts = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")  # pydantic's wrapper of a ValueError
        if not e["loc"]:  # a check across fields: its message names them
            parts.append(message)
            continue
        name = prefix + ".".join(map(str, e["loc"]))
        if flags:
            name = "--" + name.replace("_", "-")
        parts.append(f"{name}: {message}")
    return "; ".join(parts)
