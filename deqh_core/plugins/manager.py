"""The plugin system: one pluggy ``PluginManager`` for every backbone, built-in or third-party.

Plugins are found through the entry-point group ``deqh``; deqh's own backbones are registered
through that same group by this distribution (``deqh_plugins``), exactly as a third-party package
would. A plugin implements :func:`deqh_core.plugins.hookspecs.deqh_backbones` and may add
commands with :func:`deqh_core.plugins.hookspecs.deqh_register_commands` (collected by
:mod:`deqh_core.cli`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass

import pluggy

from deqh_core.plugins import hookspecs
from deqh_core.solvers.backbone import BackboneError, BackboneSpec

ENTRY_POINT_GROUP = "deqh"


class PluginError(BackboneError):
    """A plugin that fails to load or clashes with another."""


@dataclass(frozen=True)
class Registered:
    """A backbone with the plugin and distribution that provide it."""

    spec: BackboneSpec
    plugin: str
    package: str  # "name version" of the distribution, or "(registered at runtime)"


_pm: pluggy.PluginManager | None = None
_packages: dict[str, str] = {}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every entry-point plugin loaded (once)."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("deqh")
        pm.add_hookspecs(hookspecs)
        # pluggy's load_setuptools_entrypoints() lets an import error escape without saying
        # which plugin raised it; loading the entry points here names the culprit.
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name):
                continue
            package = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
            try:
                plugin = ep.load()
            except Exception as err:
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) from package {package} failed to "
                    f"load: {type(err).__name__}: {err}"
                ) from err
            pm.register(plugin, name=ep.name)
            _packages[ep.name] = package
        _pm = pm
    return _pm


def is_loaded() -> bool:
    """Whether the plugins have been loaded in this process."""
    return _pm is not None


def reload_plugins() -> pluggy.PluginManager:
    """Forget loaded plugins and discover the entry points again (e.g. after an install)."""
    global _pm
    _pm = None
    _packages.clear()
    importlib.invalidate_caches()
    return plugin_manager()


def package_of(plugin_name: str) -> str:
    """``"name version"`` of the distribution that provides a plugin."""
    plugin_manager()
    return _packages.get(plugin_name, "(registered at runtime)")


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object at runtime (tests, notebooks)."""
    plugin_manager().register(plugin, name=name)


def backbones() -> dict[str, Registered]:
    """Every registered backbone by name. Two plugins claiming one name is an error."""
    pm = plugin_manager()
    found: dict[str, Registered] = {}
    for impl in pm.hook.deqh_backbones.get_hookimpls():
        package = _packages.get(impl.plugin_name, "(registered at runtime)")
        try:
            specs = list(impl.function() or [])
        except Exception as err:  # a plugin's own bug: name it instead of a traceback
            raise PluginError(
                f"plugin {impl.plugin_name!r} ({package}): its deqh_backbones() hook raised "
                f"{type(err).__name__}: {err}"
            ) from None
        bad = [s for s in specs if not isinstance(s, BackboneSpec)]
        if bad:
            raise PluginError(
                f"plugin {impl.plugin_name!r} ({package}): deqh_backbones() must return "
                f"BackboneSpec objects, got {type(bad[0]).__name__}"
            )
        for spec in specs:
            if spec.name in found:
                other = found[spec.name]
                raise PluginError(
                    f"backbone name {spec.name!r} is claimed twice: by plugin "
                    f"{other.plugin!r} ({other.package}) and by plugin {impl.plugin_name!r} "
                    f"({package}); uninstall one of them"
                )
            found[spec.name] = Registered(spec, impl.plugin_name, package)
    return dict(sorted(found.items()))


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; an unknown name lists the known ones."""
    known = backbones()
    if name not in known:
        listing = ", ".join(known) or "none (is deqh installed, e.g. pip install -e .?)"
        raise BackboneError(f"unknown backbone {name!r}; registered backbones: {listing}")
    return known[name].spec
