"""DEQHNet's filter (paper Fig. 2): the part of the backbone that reads H and/or S.

Per DEQ iteration, the diagonal-reduction node features of H (and S) pass through one
TransBlock per layer (:mod:`~deqh_backbones.qhnet.attention`). For each interaction layer the
filter features are fused with that layer's structure features,
``fused_m = LayerNorm(Lin(x_m) + Lin(u_m))``, and node-wise and pair-wise interaction layers
(:mod:`~deqh_backbones.qhnet.interaction`) turn them into on-site and pair features, which are
projected to the heads' bottleneck and added to the structure stream's.

The structure stream's own interaction features are computed once per batch (they do not
depend on H); the filter's interaction layers run at ``filter_channels`` (default: the
bottleneck width) instead of ``channels``, which keeps a DEQ iteration a fraction of a
QHNet forward pass. Everything here that depends on the geometry only (the harmonics'
contraction, the radial MLPs, ``Lin(x_m)``) is prepared by :meth:`DEQHNetFilter.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from deqh_backbones.qhnet.attention import TransBlock
from deqh_backbones.qhnet.config import QHNetConfig
from deqh_backbones.qhnet.interaction import PairNetLayer, SelfNetLayer
from deqh_core.plugins import (
    EquivariantLayerNorm,
    EquivariantLinear,
    interaction_irreps,
    natural_irreps,
)


@dataclass
class FilterInjection:
    """Geometry-only inputs of the filter for one batch (E edges, P pairs, N atoms).

    Attributes:
        basis: harmonics contracted with the TransBlocks' Clebsch-Gordan coefficients.
        block_radial: per TransBlock ``[E, weight_numel]``.
        structure: per interaction layer ``[N, filter hidden dim]``: ``Lin(x_m)``.
        pair_radial: per interaction layer ``[P, weight_numel]``.
    """

    basis: list[torch.Tensor]
    block_radial: list[torch.Tensor]
    structure: list[torch.Tensor]
    pair_radial: list[torch.Tensor]


class DEQHNetFilter(nn.Module):
    """H/S node features -> additions to the bottleneck features of atoms and pairs.

    Args:
        config: hyperparameters (``filter_*``, ``layers``, ``interaction_layers``, ...).
        node_irreps: irreps of the node features (e.g. ``32x0e+16x1o+8x2e`` for H and S).
        irreps_hidden: irreps of the structure features ``x_m``.
        irreps_sh: edge spherical harmonics.
        block_irreps: irreps of the layout's block expansion (which types the heads need).
        irreps_bottleneck: irreps of the heads' input.
    """

    def __init__(
        self,
        config: QHNetConfig,
        node_irreps: o3.Irreps,
        irreps_hidden: o3.Irreps,
        irreps_sh: o3.Irreps,
        block_irreps: o3.Irreps,
        irreps_bottleneck: o3.Irreps,
    ):
        super().__init__()
        c = config
        irreps_filter = c.filter_irreps_resolved
        small = natural_irreps(c.filter_width, min(c.l_max, irreps_filter.lmax))
        small_out = interaction_irreps(small, block_irreps, c.filter_width)
        n = c.interaction_layers
        self.first_interaction = c.layers - n
        self.embed = EquivariantLinear(node_irreps, irreps_filter, biases=True)
        self.blocks = nn.ModuleList(
            TransBlock(
                irreps_filter, irreps_sh, c.num_rbf, c.filter_radial_hidden, c.attention_heads
            )
            for _ in range(c.layers)
        )
        self.fuse_structure = nn.ModuleList(
            EquivariantLinear(irreps_hidden, small) for _ in range(n)
        )
        self.fuse_filter = nn.ModuleList(EquivariantLinear(irreps_filter, small) for _ in range(n))
        self.norms = nn.ModuleList(EquivariantLayerNorm(small) for _ in range(n))
        self.selfs = nn.ModuleList(SelfNetLayer(small, small_out) for _ in range(n))
        self.pairs = nn.ModuleList(
            PairNetLayer(small, small_out, c.num_rbf, c.weight_width) for _ in range(n)
        )
        self.out_ii = EquivariantLinear(small_out, irreps_bottleneck)
        self.out_ij = EquivariantLinear(small_out, irreps_bottleneck)

    def prepare(
        self,
        sh: torch.Tensor,
        edge_rbf: torch.Tensor,
        pair_rbf: torch.Tensor,
        structure: list[torch.Tensor],
    ) -> FilterInjection:
        """The geometry-only part: ``sh [E, sh_dim]``, radial bases ``[E|P, num_rbf]`` and the
        structure features of the interaction layers."""
        return FilterInjection(
            basis=self.blocks[0].tp.prepare(sh),  # every TransBlock has the same irreps
            block_radial=[block.radial(edge_rbf) for block in self.blocks],
            structure=[lin(x) for lin, x in zip(self.fuse_structure, structure)],
            pair_radial=[layer.radial(pair_rbf) for layer in self.pairs],
        )

    def forward(
        self,
        node_features: torch.Tensor,
        injection: FilterInjection,
        edge_dst: torch.Tensor,
        edge_src: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``node_features [N, node_irreps.dim]`` -> bottleneck additions ``([N, dim],
        [P, dim])``."""
        u = self.embed(node_features)
        f_ii = f_ij = None
        for k, block in enumerate(self.blocks):
            u = block(u, edge_dst, edge_src, injection.basis, injection.block_radial[k])
            m = k - self.first_interaction
            if m >= 0:
                fused = self.norms[m](injection.structure[m] + self.fuse_filter[m](u))
                f_ii = self.selfs[m](fused, f_ii)
                f_ij = self.pairs[m](fused, pair_i, pair_j, injection.pair_radial[m], f_ij)
        return self.out_ii(f_ii), self.out_ij(f_ij)
