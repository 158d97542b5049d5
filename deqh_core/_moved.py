"""Module paths from before the floor plan keep importing, with a warning.

``import deqh_core.basis`` (or ``from deqh_core.evaluate import evaluate_checkpoint``) gives the
module at its new home, ``deqh_core.ao.basis``, and a ``DeprecationWarning`` naming it, so code
and plugins written before the regrouping run unchanged while their authors move the imports.
Old paths are resolved by name only: nothing here imports a floor of the package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "errors": "util.errors",
    "atomic": "util.files",
    "cache": "util.cache",
    "device": "util.device",
    "parallel": "util.parallel",
    "progress": "util.progress",
    "basis": "ao.basis",
    "convention": "ao.convention",
    "blocks": "ao.blocks",
    "expansion": "ao.expansion",
    "reduction": "ao.reduction",
    "orbitals": "ao.orbitals",
    "graph": "ops.graph",
    "recipe": "data.recipe",
    "domain": "data.domain",
    "solver": "solvers.protocol",
    "backbone": "solvers.backbone",
    "deq": "solvers.deq",
    "fixed_point": "solvers.fixed_point",
    "prior": "solvers.prior",
    "hookspecs": "plugins.hookspecs",
    "testing": "plugins.testing",
    "config": "training.config",
    "model": "training.model",
    "checkpoint": "training.checkpoint",
    "metrics": "training.metrics",
    "train": "training.trainer",
    "evaluate": "inference.evaluate",
    "predict": "inference.predict",
    "scf": "inference.scf",
    "analyze": "inference.analyze",
    "ablate": "experiments.ablate",
}
"""Old module name under ``deqh_core`` -> its home now. (``deqh_core.plugins``, the old plugin
manager module, is now the plugin author's face; the manager is ``deqh_core.plugins.manager``.)"""


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds ``deqh_core.<old>`` as the module of its new home."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != "deqh_core" or name not in MOVED:
            return None
        new = f"deqh_core.{MOVED[name]}"
        warnings.warn(
            f"{fullname} moved to {new}; import it from there (the old path will go)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
