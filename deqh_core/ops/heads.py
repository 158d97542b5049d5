"""Output heads: equivariant features -> AO blocks by tensor expansion (DEQHNet paper eq. 14).

As in QHNet, the map from the bottleneck features to the expansion coefficients is a linear
layer whose weights (and scalar biases) are produced from the elements involved: the atom's
embedding for an on-site block, both embeddings for a pair block. The coefficients become a
block through the core's :class:`~deqh_core.ao.expansion.BlockExpansion` (Clebsch-Gordan, one
matmul).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from deqh_core.ao.expansion import BlockExpansion
from deqh_core.ops.linear import EquivariantLinear


def natural_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``C x 0e + C x 1o + C x 2e + ...`` up to ``l_max``: hidden node irreps of natural parity."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


def head_irreps(
    hidden: o3.Irreps, block_irreps: o3.Irreps, channels: int, bottleneck: int
) -> tuple[o3.Irreps, o3.Irreps]:
    """``(interaction, bottleneck)`` irreps of a backbone whose pair / on-site layers multiply
    ``hidden`` features (:func:`interaction_irreps`) and whose heads read ``bottleneck x ir``
    of each irrep type of the blocks.

    Raises:
        ValueError: products of ``hidden`` features do not reach every irrep of the blocks.
    """
    interaction = interaction_irreps(hidden, block_irreps, channels)
    needed = {ir for _, ir in block_irreps}
    missing = needed - {ir for _, ir in interaction}
    if missing:
        l_block, l_hidden = max(ir.l for ir in needed), max(ir.l for _, ir in hidden)
        raise ValueError(
            f"the blocks contain irreps up to l={l_block} ({sorted(missing)} among them), but "
            f"products of hidden features with l_max={l_hidden} reach l={2 * l_hidden} only; "
            f"use l_max >= {(l_block + 1) // 2}"
        )
    return interaction, o3.Irreps([(bottleneck, ir) for _, ir in interaction if ir in needed])


def interaction_irreps(hidden: o3.Irreps, needed: o3.Irreps, channels: int) -> o3.Irreps:
    """``hidden`` followed by ``channels x ir`` for every irrep type of ``needed`` that
    ``hidden`` lacks but ``hidden ⊗ hidden`` reaches (sorted), so that ``hidden`` is a prefix."""
    have = {ir for _, ir in hidden}
    reachable = {ir for _, a in hidden for _, b in hidden for ir in a * b}
    extra = sorted(({ir for _, ir in needed} - have) & reachable)
    return o3.Irreps(list(hidden) + [(channels, ir) for ir in extra])


class ExpansionHead(nn.Module):
    """``features [N, irreps_in.dim]`` + per-row head weights -> blocks ``[N, A, A]``.

    ``weights(condition [N, cond_dim])`` gives the element-dependent weights and biases (it
    reads the structure only, so a DEQ computes it once per batch); ``forward(features,
    weights)`` applies them.

    Args:
        irreps_in: irreps of the bottleneck features.
        expansion: the layout's block expansion (may be shared between heads).
        cond_dim: size of the conditioning vector (element embeddings).
        hidden: hidden width of the weight MLPs.
    """

    def __init__(self, irreps_in: o3.Irreps, expansion: BlockExpansion, cond_dim: int, hidden: int):
        super().__init__()
        self.expansion = expansion
        irreps_out = expansion.irreps
        missing = {ir for _, ir in irreps_out} - {ir for _, ir in o3.Irreps(irreps_in)}
        if missing:
            raise ValueError(f"head input {irreps_in} lacks the block irreps {sorted(missing)}")
        self.linear = EquivariantLinear(irreps_in, irreps_out, shared_weights=False)
        scalar = [
            i
            for (mul, ir), sl in zip(irreps_out, irreps_out.slices())
            if ir == o3.Irrep("0e")
            for i in range(sl.start, sl.stop)
        ]
        self.register_buffer("scalar_slots", torch.tensor(scalar, dtype=torch.long))
        self.weight_net = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, self.linear.weight_numel)
        )
        self.bias_net = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, len(scalar))
        )

    def weights(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, weight_numel], [N, n_scalar_outputs])`` from ``condition [N, cond_dim]``."""
        return self.weight_net(condition), self.bias_net(condition)

    def forward(
        self, features: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        weight, bias = weights
        coefficients = self.linear(features, weight).index_add(1, self.scalar_slots, bias)
        return self.expansion(coefficients)
