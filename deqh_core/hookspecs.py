"""pluggy hook specifications of deqh. A plugin implements them with ``deqh_core.hookimpl``."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("deqh")
hookimpl = pluggy.HookimplMarker("deqh")


@hookspec
def deqh_backbones() -> list:
    """Return the backbones this plugin provides, as a list of
    :class:`deqh_core.backbone.BackboneSpec`."""
