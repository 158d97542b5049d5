"""Hook implementations registering deqh's built-in backbones.

Registered through the ``deqh`` entry-point group in deqh's own ``pyproject.toml``, exactly as a
third-party plugin is (see ``plugins/deqh-example``).
"""

from __future__ import annotations

from deqh_core.plugins import BackboneSpec, Capabilities, hookimpl


def _qhnet(config, layout, node_irreps, pair_irreps=None):
    from deqh_backbones.qhnet import QHNet  # e3nn model code is imported only when built

    return QHNet(config, layout, node_irreps, pair_irreps)


@hookimpl
def deqh_backbones() -> list[BackboneSpec]:
    from deqh_backbones.qhnet.config import QHNetConfig

    return [
        BackboneSpec(
            name="qhnet",
            description="QHNet, an O(3)-equivariant Hamiltonian predictor; with --deq the "
            "DEQHNet solver (attention filter over H and S features, paper Fig. 2; with "
            "deq.feedback=full also the off-diagonal blocks)",
            config=QHNetConfig,
            factory=_qhnet,
            capabilities=Capabilities(reads_h=True, reads_s=True, reads_pairs=True),
        )
    ]
