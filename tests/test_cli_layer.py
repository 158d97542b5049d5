"""The CLI is a layer of its own: logic modules never import Typer, scoring a checkpoint does
not import the trainer, plugins add commands through a hook, files are written atomically."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deqh_core import hookspecs, plugins
from deqh_core.atomic import atomic_open, atomic_write
from deqh_core.cli import app

ROOT = Path(__file__).resolve().parents[1] / "deqh_core"
LOGIC = sorted(
    p
    for p in ROOT.rglob("*.py")
    if "cli" not in p.relative_to(ROOT).parts[:1] and p.name != "__main__.py"
)
runner = CliRunner()


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_logic_module_imports_typer():
    assert len(LOGIC) > 20
    offenders = [
        str(p.relative_to(ROOT.parent))
        for p in LOGIC
        if any(m == "typer" or m.startswith(("typer.", "deqh_core.cli")) for m in _imports(p))
    ]
    assert offenders == []


def test_importing_evaluation_imports_neither_the_trainer_nor_typer():
    code = (
        "import sys, deqh_core.evaluate, deqh_core.predict, deqh_core.scf, deqh_core.analyze, "
        "deqh_core.ablate\n"
        "print(sorted(m for m in ('deqh_core.train', 'typer') if m in sys.modules))"
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
