"""Exceptions raised by deqh. Every message names the file, record or option at fault."""

from __future__ import annotations


class DeqhError(Exception):
    """Base class of every error deqh raises on purpose."""


class BasisError(DeqhError, ValueError):
    """A basis set or element that PySCF cannot provide, or a matrix that does not fit it."""


class DataError(DeqhError, ValueError):
    """Malformed or inconsistent input data (xyz, database, labels)."""
