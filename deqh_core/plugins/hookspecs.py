"""pluggy hook specifications of deqh. A plugin implements them with ``deqh_core.hookimpl``."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("deqh")
hookimpl = pluggy.HookimplMarker("deqh")


@hookspec
def deqh_backbones() -> list:
    """Return the backbones this plugin provides, as a list of
    :class:`deqh_core.solvers.backbone.BackboneSpec`."""


@hookspec
def deqh_register_commands(app) -> None:
    """Add commands to the ``deqh`` command line. ``app`` is a ``typer.Typer`` of the plugin's
    own: decorate functions with ``@app.command("name")`` or add a group with
    ``app.add_typer(group, name="name")``; they appear as ``deqh name``. A name that a built-in
    command or another plugin already uses is an error naming both. Plugin commands load only
    when asked for (``deqh name``, ``deqh --help``), so import heavy modules inside them."""
