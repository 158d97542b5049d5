"""QHNet's ConvNetLayer: the structure stream's message passing (paper eq. 11-13, Fig. 2c)."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn
from torch.nn import functional as F

from deqh_core.plugins import Channels, EquivariantLinear, NormGate, SphericalTensorProduct


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x) - math.log(2.0)


class ConvNetLayer(nn.Module):
    """One TFN-style layer with QHNet's inner-product attention on the filter.

    For an edge ``i <- j`` (vector ``r_ij`` from i to j) the invariants of the pair, namely the
    scalars of both atoms and the channel-wise inner products ``<Lin(x_i), Lin(x_j)>`` (eq. 11),
    go through an MLP whose output multiplies the radial MLP of the distance: together they
    weight every path of the tensor product ``x_j ⊗ Y(r̂_ij)`` (eq. 12). Messages are summed
    at i, the self-connection added and a linear layer applied (eq. 13); a residual connection
    wraps the layer when input and output irreps agree.

    ``forward(x [N, irreps_in.dim], edge_dst [E], edge_src [E], basis, rbf [E, num_rbf])
    -> [N, irreps_out.dim]``, with ``basis = layer.tp.prepare(sh)`` of the edges' spherical
    harmonics (shared by all layers with the same input irreps).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_rbf: int,
        radial_hidden: int,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.residual = self.irreps_in == self.irreps_out
        self.channels = Channels(self.irreps_in)
        self.tp = SphericalTensorProduct(
            self.irreps_in, irreps_sh, [ir for _, ir in self.irreps_out]
        )
        if self.tp.irreps_out != self.irreps_out:
            raise ValueError(f"{self.irreps_in} ⊗ {irreps_sh} does not reach {self.irreps_out}")
        n = self.tp.weight_numel
        self.radial = FullyConnectedNet([num_rbf, radial_hidden, n], shifted_softplus)
        n_invariants = self.channels.num_channels + self.channels.n_scalars
        self.attention = FullyConnectedNet([n_invariants, radial_hidden, n], shifted_softplus)
        if self.residual:
            self.pre = EquivariantLinear(self.irreps_in, self.irreps_in, biases=True)
            self.gate = NormGate(self.irreps_in)
            self.node = EquivariantLinear(self.irreps_in, self.irreps_in, biases=True)
        self.out = EquivariantLinear(self.irreps_out, self.irreps_out, biases=True)

    def invariants(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[E, n_invariants]``: scalars of both ends and per-channel inner products."""
        s = self.channels.n_scalars
        return torch.cat([a[:, :s], b[:, :s], self.channels.inner(a, b)], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        edge_dst: torch.Tensor,
        edge_src: torch.Tensor,
        basis: list[torch.Tensor],
        rbf: torch.Tensor,
    ) -> torch.Tensor:
        if self.residual:
            pre = self.pre(x)
            invariants = self.invariants(pre[edge_dst], pre[edge_src])
            h = self.node(self.gate(x))
        else:
            invariants = self.invariants(x[edge_dst], x[edge_src])
            h = x
        weights = self.radial(rbf) * self.attention(invariants)
        messages = self.tp(h[edge_src], basis, weights)
        out = messages.new_zeros(x.shape[0], messages.shape[1]).index_add_(0, edge_dst, messages)
        if self.residual:
            out = out + h
        out = self.out(out)
        return x + out if self.residual else out
