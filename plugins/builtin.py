"""Hook implementations registering deqh's built-in backbones.

Registered through the ``deqh`` entry-point group in deqh's own ``pyproject.toml``, exactly as a
third-party plugin is (see ``plugins/deqh-example``).
"""

from __future__ import annotations

from deqh_core.backbone import BackboneSpec
from deqh_core.hookspecs import hookimpl


@hookimpl
def deqh_backbones() -> list[BackboneSpec]:
    return []  # QHNet / DEQHNet land here (issue: backbones)
