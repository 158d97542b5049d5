"""The floor plan of ``deqh_core`` (docs/architecture.md) holds and its contracts bite.

``lint-imports`` (import-linter, contracts in pyproject.toml) checks the layering, the absence
of import cycles and that logic never imports the CLI's libraries; CI runs it. Here: it passes,
and each contract fails when a copy of the package is given the import it forbids. Beside it,
two rules import-linter cannot see: a function-level import says why in a comment, and the
modules that spawned PySCF workers import stay free of torch.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "deqh_core"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``deqh_core`` found first on ``root`` (the repo or a copy)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_import_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_a_cycle_and_typer_in_logic_each_break_a_contract(tmp_path):
    copy = tmp_path / "deqh_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    mutations = {
        "ao/basis.py": "import deqh_core.training.config",  # a floor importing a higher one
        "inference/scf.py": "import deqh_core.inference.predict",  # predict imports scf
        "ao/blocks.py": "import typer",  # the CLI's library in the logic
    }
    for path, line in mutations.items():
        with open(copy / path, "a") as f:
            f.write(f"\n{line}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "3 broken" in result.stdout, result.stdout
    assert "deqh_core.ao.basis -> deqh_core.training.config" in result.stdout
    assert "No cycles are allowed in deqh_core.inference" in result.stdout
    assert ".scf -> .predict" in result.stdout
    assert "deqh_core.ao.blocks -> typer" in result.stdout


def _unexplained_function_imports(path: Path) -> list[str]:
    """Groups of import statements inside functions with no comment on the line above the
    group or on its first line."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for block in ast.walk(node):
            for field in ("body", "orelse", "finalbody"):
                statements = getattr(block, field, None)
                if not isinstance(statements, list):
                    continue
                for i, stmt in enumerate(statements):
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        continue
                    if i and isinstance(statements[i - 1], (ast.Import, ast.ImportFrom)):
                        continue  # inside a group: the group's first import carries the reason
                    above = lines[stmt.lineno - 2].strip()
                    if not above.startswith("#") and "#" not in lines[stmt.lineno - 1]:
                        found.append(f"{path.relative_to(REPO)}:{stmt.lineno}")
    return found


def test_every_function_level_import_says_why():
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 40
    assert [where for p in paths for where in _unexplained_function_imports(p)] == []


@pytest.mark.parametrize(
    "module", ["deqh_core.inference.scf", "deqh_core.data.generate", "deqh_core.data.qm9"]
)
def test_modules_of_spawned_pyscf_workers_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
