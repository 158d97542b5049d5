"""Run pytest where PySCF may be missing (benchmarks/gpu_check.sh on a bare GPU machine).

    python benchmarks/gpu_tests.py -m gpu tests      # any pytest arguments

AO layouts and on-site tables come from ``benchmarks/gpu_inputs`` (``gpu_inputs.use``); test
modules that import PySCF or ASE themselves cannot run there and are left out, by name, instead
of failing the collection. Where PySCF is installed this is plain pytest.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import gpu_inputs
import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING = ("pyscf", "ase")


class LeaveOutModulesNeedingPySCF:
    def __init__(self):
        self.left_out: list[str] = []

    def pytest_ignore_collect(self, collection_path: Path, config):
        path = Path(collection_path).resolve()
        if path.suffix != ".py" or not path.name.startswith("test_"):
            return None
        asked = [Path(a.split("::")[0]).resolve() for a in config.args]
        if not any(path == a or a in path.parents for a in asked):
            return None  # not asked for: pytest decides
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] in MISSING:
                self.left_out.append(f"{path.name} ({err.name})")
                return True
        except BaseException:  # e.g. a module-level skip: pytest reports it
            pass
        return None  # pytest collects it and reports what it finds

    def pytest_terminal_summary(self, terminalreporter):
        if self.left_out:
            terminalreporter.write_line(
                "left out (they need a package this machine lacks): " + ", ".join(self.left_out)
            )


def main() -> int:
    sys.path.insert(0, str(ROOT))
    gpu_inputs.use()
    return pytest.main(sys.argv[1:], plugins=[LeaveOutModulesNeedingPySCF()])


if __name__ == "__main__":
    sys.exit(main())
