"""``python -m deqh_core``: the ``deqh`` command line."""

from deqh_core.cli import app

app(prog_name="deqh")
