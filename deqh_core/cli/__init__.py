"""The ``deqh`` command line: the layer that turns the logic modules into commands.

One module per command group; each has a ``register(app)`` that adds its commands to the root
app, exactly what a plugin's :func:`~deqh_core.plugins.hookspecs.deqh_register_commands`
does. The logic modules (``deqh_core.training``, ``deqh_core.inference``, ...) never import
Typer.

Commands import heavy modules (torch, PySCF) inside their functions so that ``deqh --help``
stays fast. Any ``DeqhError`` a command raises is shown as one red ``error: ...`` line on stderr
with exit code 1. Plugin commands are loaded when a command name is not a built-in one or when
the command list is shown, so the built-in commands never pay for importing plugins.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from deqh_core.cli import (
    ablate,
    analyze,
    backbones,
    checkpoint,
    data,
    evaluate,
    models,
    predict,
    scf,
    train,
)
from deqh_core.cli.options import stderr
from deqh_core.util.errors import DeqhError

__all__ = ["app", "plugin_commands"]

BUILTIN = (data, backbones, checkpoint, models, train, evaluate, predict, scf, analyze, ablate)


class _Group(TyperGroup):
    """Root command group: one-line errors, and plugin commands loaded on demand."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeqhError as err:
            stderr.print(f"error: {err}", style="red", markup=False)
            raise typer.Exit(1) from None
        except (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            # a path the user gave that cannot be written (or read): one line naming it
            stderr.print(f"error: {err.filename}: {err.strerror}", style="red", markup=False)
            raise typer.Exit(1) from None

    def list_commands(self, ctx) -> list[str]:
        if not _other_plugins():  # spare `deqh --help` the import of torch
            return super().list_commands(ctx)
        try:
            extra = plugin_commands(set(self.commands))
        except DeqhError as err:  # a broken plugin must not take `deqh --help` down with it
            stderr.print(f"warning: plugin commands not loaded: {err}", style="yellow")
            extra = {}
        return sorted(set(super().list_commands(ctx)) | set(extra))

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        try:
            return plugin_commands(set(self.commands)).get(name)
        except DeqhError as err:
            stderr.print(f"error: {err}", style="red", markup=False)
            raise typer.Exit(1) from None


_loaded: tuple[tuple, dict, dict] | None = None  # (plugins registered, commands, owners)


def _other_plugins() -> bool:
    """Whether any plugin besides deqh's own (which adds no commands) may add commands: one
    installed under the entry-point group, or any once the plugins are loaded anyway."""
    # imported when the command runs, so that `deqh --help` stays fast
    from importlib.metadata import entry_points

    loaded = sys.modules.get("deqh_core.plugins.manager")
    if loaded is not None and loaded.is_loaded():
        return True
    return any(ep.name != "deqh" for ep in entry_points(group="deqh"))


def plugin_commands(builtin: set[str] | None = None) -> dict:
    """``{name: click command}`` added by the plugins' ``deqh_register_commands`` hooks,
    collected per plugin so that a clash names both sides (cached per plugin manager).

    Raises:
        PluginError: two plugins add one name, or a plugin reuses a built-in command's name.
    """
    global _loaded
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.plugins.manager import PluginError, package_of, plugin_manager

    pm = plugin_manager()
    key = (id(pm), tuple(sorted(name for name, _ in pm.list_name_plugin())))
    if _loaded is not None and _loaded[0] == key:
        commands, owner = _loaded[1], _loaded[2]
    else:
        commands, owner = {}, {}
        for impl in pm.hook.deqh_register_commands.get_hookimpls():
            sub = typer.Typer()
            impl.function(app=sub)
            where = f"plugin {impl.plugin_name!r} ({package_of(impl.plugin_name)})"
            if not sub.registered_commands and not sub.registered_groups:
                continue
            for name, command in typer.main.get_group(sub).commands.items():
                if name in commands:
                    raise PluginError(
                        f"command {name!r} is added twice: by {owner[name]} and by {where}; "
                        "uninstall one of them"
                    )
                commands[name], owner[name] = command, where
        _loaded = (key, commands, owner)
    for name in sorted(set(commands) & (builtin or set())):
        raise PluginError(
            f"{owner[name]} adds a command {name!r}, which is a built-in deqh command; the "
            "plugin must choose another name"
        )
    return commands


app = typer.Typer(
    cls=_Group,
    name="deqh",
    help="Deep-equilibrium Hamiltonian solvers: data, training and evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
for _module in BUILTIN:
    _module.register(app)
