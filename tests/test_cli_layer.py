"""The CLI is a layer of its own: scoring a checkpoint does not import the trainer, plugins add
commands through a hook, files are written atomically. (That logic modules never import Typer
is an import contract: tests/test_floor_plan.py.)"""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.plugins import hookspecs
from deqh_core.plugins import manager as plugins
from deqh_core.util.files import atomic_open, atomic_write

runner = CliRunner()


def test_importing_evaluation_imports_neither_the_trainer_nor_typer():
    code = (
        "import sys, deqh_core.inference.evaluate, deqh_core.inference.predict, "
        "deqh_core.inference.scf, deqh_core.inference.analyze, deqh_core.experiments.ablate\n"
        "print(sorted(m for m in ('deqh_core.training.trainer', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _Adds:
    def __init__(self, name: str):
        self.name = name

    @hookspecs.hookimpl
    def deqh_register_commands(self, app):
        @app.command(self.name)
        def command() -> None:
            print(f"ran {self.name}")


def test_plugins_add_commands_through_the_hook(example_plugin):
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0 and "tfn-mini-irreps" in listing.output
    result = runner.invoke(app, ["tfn-mini-irreps", "--channels", "8"])
    assert result.exit_code == 0 and result.output.strip() == "8x0e+4x1o+2x2e"
    for name, plugin in (("a", _Adds("hello")), ("b", _Adds("hello"))):
        plugins.register(plugin, name=name)
    try:
        clash = runner.invoke(app, ["tfn-mini-irreps"])
        assert clash.exit_code == 1
        assert "command 'hello' is added twice: by plugin 'a'" in clash.output
        assert "and by plugin 'b'" in clash.output
        plugins.plugin_manager().unregister(name="b")
        assert runner.invoke(app, ["hello"]).output == "ran hello\n"
        plugins.register(_Adds("train"), name="c")
        clash = runner.invoke(app, ["hello"])
        assert clash.exit_code == 1 and "'train', which is a built-in deqh command" in clash.output
        assert runner.invoke(app, ["--help"]).exit_code == 0  # a clash never breaks the help
    finally:
        plugins.reload_plugins()


def test_atomic_writes_leave_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("half of the new content")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == [
        "file.txt"
    ]
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
