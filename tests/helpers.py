"""Helpers shared by test modules."""

import os
import subprocess
import sys


def run_deqh(*args: str, site=None) -> subprocess.CompletedProcess:
    """``python -m deqh_core ARGS`` in a fresh process, with ``site`` (a ``pip install
    --target`` folder, e.g. an installed plugin) as its only PYTHONPATH."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-m", "deqh_core", *args], capture_output=True, text=True, env=env
    )
