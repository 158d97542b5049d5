"""Crafted inputs for the bad-input tests: files that would run code if deqh unpickled or
evaluated them, and broken copies of the bundled dataset."""

import pickle
import shutil
import sqlite3
from pathlib import Path

from deqh_core.data.dataset import BUNDLED


class RunsCode:
    """Unpickling this runs code: it writes ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def pickled(marker: Path) -> bytes:
    """Pickle bytes that write ``marker`` when loaded."""
    return pickle.dumps(RunsCode(marker))


def yaml_payload(marker: Path) -> str:
    """A YAML settings file that writes ``marker`` under PyYAML's unsafe loader."""
    return f"optim:\n  lr: !!python/object/apply:exec [\"open({str(marker)!r}, 'w')\"]\n"


def broken_copy(path: Path, sql: str, *args) -> None:
    """A copy of the bundled dataset at ``path``, broken by one SQL statement."""
    shutil.copy(BUNDLED, path)
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
