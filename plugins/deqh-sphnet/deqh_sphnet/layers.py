"""SPHNet's spherical node interaction and pair-construction layers.

* :class:`SphericalLayer` -- ``x_j ⊗ Y(r̂_ij)`` messages (``uvu``), every path weighted by a
  radial MLP times an MLP of the edge's invariants; summed with the self term, layer-normed;
  with a
  :class:`~deqh_sphnet.gates.PairGate` (edges) after the first layer.
* :class:`DiagLayer` -- on-site features ``Lin(gate(x)) ⊗ Lin(gate(x))`` (``uuu``, learned
  per-channel weights), paths chosen by a :class:`~deqh_sphnet.gates.PathGate`.
* :class:`OffDiagLayer` -- pair features ``Lin(gate(x_i)) ⊗ Lin(gate(x_j))`` (``uuu``, weights
  per pair from the distance and the pair's invariants), paths chosen by a ``PathGate`` and,
  after the first layer, pairs by a ``PairGate``: a dropped pair keeps the previous layer's
  features, so every block is still predicted.

Outputs are in the *interaction irreps* (``interaction_irreps``: the hidden irreps plus the
parity-flipped ones the AO blocks contain), so the model is O(3)-equivariant; the reference
labels every irrep even and is SO(3)-equivariant only.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn
from torch.nn import functional as F

from deqh_core.plugins import (
    Channels,
    ChannelTensorProduct,
    EquivariantLayerNorm,
    EquivariantLinear,
    NormGate,
    SphericalTensorProduct,
)
from deqh_sphnet.gates import PairGate, PathGate


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x) - math.log(2.0)


def _scaled(weight: torch.Tensor, scale: torch.Tensor, mul: int) -> torch.Tensor:
    """``weight [..., mul * n_paths]`` (channel-major) with path ``p`` scaled by ``scale[p]``."""
    return (weight.unflatten(-1, (mul, -1)) * scale).flatten(-2)


class SphericalLayer(nn.Module):
    """``forward(x [N, in.dim], edge_dst [E], edge_src [E], edge_mol [E], sh [E, sh.dim],
    rbf [E, num_rbf]) -> [N, out.dim]``; residual when input and output irreps agree.

    Args:
        sparsity: the pair gate's share of dropped edges (per molecule), or None for no gate.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_rbf: int,
        radial_hidden: int,
        sparsity: float | None,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.residual = self.irreps_in == self.irreps_out
        self.channels = Channels(self.irreps_in)
        self.tp = SphericalTensorProduct(self.irreps_in, irreps_sh, [ir for _, ir in irreps_out])
        n = self.tp.weight_numel
        n_invariants = self.channels.num_channels + self.channels.n_scalars
        self.radial = FullyConnectedNet([num_rbf, radial_hidden, n], shifted_softplus)
        self.attention = FullyConnectedNet([n_invariants, radial_hidden, n], shifted_softplus)
        self.pair_gate = PairGate(n_invariants, sparsity) if sparsity is not None else None
        if self.residual:
            self.pre = EquivariantLinear(self.irreps_in, self.irreps_in, biases=True)
            self.gate = NormGate(self.irreps_in)
            self.node = EquivariantLinear(self.irreps_in, self.irreps_in, biases=True)
        self.norm = EquivariantLayerNorm(self.irreps_out)
        self.out = EquivariantLinear(self.irreps_out, self.irreps_out, biases=True)

    def forward(self, x, edge_dst, edge_src, edge_mol, sh, rbf) -> torch.Tensor:
        s = self.channels.n_scalars
        q, h = (self.pre(x), self.node(self.gate(x))) if self.residual else (x, x)
        qi, qj = q[edge_dst], q[edge_src]
        invariants = torch.cat([qi[:, :s], qj[:, :s], self.channels.inner(qi, qj)], dim=1)
        if self.pair_gate is not None:
            kept, factor = self.pair_gate(invariants, edge_mol)
            invariants = invariants[kept] * factor
            edge_dst, edge_src, sh, rbf = edge_dst[kept], edge_src[kept], sh[kept], rbf[kept]
        weights = self.radial(rbf) * self.attention(invariants)
        messages = self.tp(h[edge_src], self.tp.prepare(sh), weights)
        out = messages.new_zeros(x.shape[0], messages.shape[1]).index_add_(0, edge_dst, messages)
        if self.residual:
            out = out + h
        # normalised after the self term is added (the reference normalises the messages
        # only): its NormGate'd self term otherwise grew without bound in one of two CPU-size
        # training seeds (layer output ~7e3, off-diagonal blocks ~1e7 Ha)
        out = self.out(self.norm(out))
        return x + out if self.residual else out


class DiagLayer(nn.Module):
    """On-site features. ``forward(x [N, hidden.dim], previous [N, out.dim] | None)
    -> [N, out.dim]`` (added to ``previous``)."""

    def __init__(self, irreps_hidden: o3.Irreps, irreps_out: o3.Irreps, sparsity: float):
        super().__init__()
        self.hidden_dim = irreps_hidden.dim
        self.gate_a, self.gate_b = NormGate(irreps_hidden), NormGate(irreps_hidden)
        self.lin_a = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.lin_b = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.tp = ChannelTensorProduct(irreps_hidden, irreps_out)
        self.tp_weight = nn.Parameter(torch.randn(self.tp.weight_numel))
        self.path_gate = PathGate(self.tp.n_paths, sparsity)
        self.gate_out = NormGate(irreps_out, hidden=irreps_hidden.num_irreps)
        self.lin_out = EquivariantLinear(irreps_out, irreps_out, biases=True)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        scale, paths = self.path_gate()
        weight = _scaled(self.tp_weight, scale, self.tp.mul).expand(x.shape[0], -1)
        t = self.tp(self.lin_a(self.gate_a(x)), self.lin_b(self.gate_b(x)), weight, paths)
        natural, flipped = torch.split(t, [self.hidden_dim, t.shape[1] - self.hidden_dim], dim=1)
        t = torch.cat([natural + x, flipped], dim=1)  # residual on the hidden irreps
        t = self.lin_out(self.gate_out(t))
        return t if previous is None else previous + t


class OffDiagLayer(nn.Module):
    """Pair features for ordered pairs ``(i, j)``. ``radial(rbf [P, num_rbf])`` depends on the
    geometry only; ``select(invariants(x, pair_i, pair_j), pair_mol)`` picks the pairs (gated
    layers; a DEQ picks them once, from the geometry-only features); ``forward(x [N, hidden.dim],
    pair_i [P], pair_j [P], radial [P, n], previous [P, out.dim] | None, selection)
    -> [P, out.dim]``: ``previous`` plus the new features, on the selected pairs only.
    """

    def __init__(
        self,
        irreps_hidden: o3.Irreps,
        irreps_out: o3.Irreps,
        num_rbf: int,
        hidden: int,
        path_sparsity: float,
        pair_sparsity: float | None,
    ):
        super().__init__()
        self.channels = Channels(irreps_hidden)
        self.lin_inner = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.gate_in = NormGate(irreps_hidden)
        self.lin_in = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.tp = ChannelTensorProduct(irreps_hidden, irreps_out)
        n = self.tp.weight_numel
        self.radial_net = FullyConnectedNet([num_rbf, hidden, n], shifted_softplus)
        n_invariants = self.channels.num_channels  # mean scalars + inner products (l > 0)
        self.attention = nn.Sequential(
            nn.Linear(n_invariants, hidden), nn.SiLU(), nn.Linear(hidden, n)
        )
        self.path_gate = PathGate(self.tp.n_paths, path_sparsity)
        self.pair_gate = None if pair_sparsity is None else PairGate(n_invariants, pair_sparsity)
        self.gate_out = NormGate(irreps_out, hidden=irreps_hidden.num_irreps)
        self.lin_out = EquivariantLinear(irreps_out, irreps_out, biases=True)

    def radial(self, rbf: torch.Tensor) -> torch.Tensor:
        return self.radial_net(rbf)

    def invariants(self, x, pair_i, pair_j) -> torch.Tensor:
        """``[P, n]``: the mean of both atoms' scalars and their channel-wise inner products
        (symmetric in i and j, so both orders of a pair score alike)."""
        s = self.channels.n_scalars
        q = self.lin_inner(x)
        qi, qj = q[pair_i], q[pair_j]
        return torch.cat([(qi[:, :s] + qj[:, :s]) / 2, self.channels.inner(qi, qj)], dim=1)

    def select(self, invariants, pair_mol) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The gated pairs ``(kept [K], factor [K, 1])``, or None (every pair, factor 1)."""
        return None if self.pair_gate is None else self.pair_gate(invariants, pair_mol)

    def forward(self, x, pair_i, pair_j, radial, previous, selection):
        invariants = self.invariants(x, pair_i, pair_j)
        if selection is not None:
            kept, factor = selection
            pair_i, pair_j, radial = pair_i[kept], pair_j[kept], radial[kept]
            invariants = invariants[kept] * factor
        scale, paths = self.path_gate()
        weight = _scaled(radial * self.attention(invariants), scale, self.tp.mul)
        y = self.lin_in(self.gate_in(x))
        t = self.lin_out(self.gate_out(self.tp(y[pair_i], y[pair_j], weight, paths)))
        if previous is None:
            return t
        if selection is None:
            return previous + t
        return previous.index_add(0, selection[0], t)
