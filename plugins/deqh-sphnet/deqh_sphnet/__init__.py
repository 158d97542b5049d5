"""deqh plugin registering the ``sphnet`` backbone (SPHNet, Luo et al., ICML 2025).

Modules: :mod:`~.config` (hyperparameters), :mod:`~.vectorial` (ViSNet layers: invariant atom
descriptors), :mod:`~.gates` (the pair and tensor-product sparsity gates and their schedule),
:mod:`~.layers` (spherical and pair-construction layers), :mod:`~.model` (the backbone). It
imports from deqh only through ``deqh_core.plugins``, as any third-party plugin.
"""

from deqh_core.plugins import BackboneSpec, Capabilities, hookimpl
from deqh_sphnet.config import SPHNetConfig

# deqh's CPU presets (cpu-small, qh9-small) with SPHNet: the same widths as their QHNet
# (16 channels, l_max 2, 8 bottleneck channels, 5 Å), two ViSNet layers, and no sparsity: at
# this size the gates cost accuracy and save no time (qh9-small, 1500 steps, 2 seeds: val H MAE
# 5420 ± 242 µHa at sparsity 0, 6063 ± 137 at 0.3, 7658 ± 1302 at 0.5, 13420 ± 3443 at the
# paper's 0.7; benchmarks/sphnet_sparsity.py, README)
CPU = {
    "channels": 16,
    "bottleneck": 8,
    "l_max": 2,
    "vector_layers": 2,
    "vector_heads": 2,
    "vector_rbf": 16,
    "cutoff": 5.0,
    "num_rbf": 16,
    "radial_hidden": 16,
    "sparsity": 0.0,
}


def _sphnet(config, layout, node_irreps, pair_irreps=None):
    from deqh_sphnet.model import SPHNet  # model code is imported only when built

    return SPHNet(config, layout, node_irreps, pair_irreps)


@hookimpl
def deqh_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="sphnet",
            description="SPHNet: vectorial + spherical node interaction and pair construction "
            "with learned pair and tensor-product sparsity; with --deq a solver reading H (and S) "
            "at its last pair layer, with deq.feedback=full also the off-diagonal blocks",
            config=SPHNetConfig,
            factory=_sphnet,
            capabilities=Capabilities(reads_h=True, reads_s=True, reads_pairs=True),
            presets={"cpu-small": CPU, "qh9-small": CPU},
        )
    ]
