"""Where deqh keeps files it can always rebuild (on-site overlap tables, the parsed QM9 table)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Directory of the on-disk caches: ``$DEQH_CACHE`` or ``~/.cache/deqh``."""
    env = os.environ.get("DEQH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deqh"
