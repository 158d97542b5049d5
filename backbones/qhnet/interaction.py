"""QHNet's node-wise (self) and pair-wise interaction layers: on-site and pair features.

Both build a channel-wise tensor product of node features (``x ⊗ x`` for a node, ``x_i ⊗ x_j``
for a pair) into the *interaction irreps*: the hidden irreps plus the parity-flipped irreps that
a block of the AO layout contains (a p-p block has a ``1e`` part, a p-d block a ``2o`` part).
Products of natural-parity features reach them, so the model is O(3)- (not just SO(3)-)
equivariant. The outputs of successive layers accumulate (QHNet's ``fii``/``fij``).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn

from deqh_backbones.qhnet.conv import shifted_softplus
from deqh_core.plugins import Channels, ChannelTensorProduct, EquivariantLinear, NormGate


class SelfNetLayer(nn.Module):
    """On-site features: ``Lin(gate(x)) ⊗ Lin(gate(x))`` (shared weights), plus ``x``, then
    gate and linear; added to the previous layer's on-site features.

    ``forward(x [N, hidden.dim], previous [N, out.dim] | None) -> [N, out.dim]``.
    """

    def __init__(self, irreps_hidden: o3.Irreps, irreps_out: o3.Irreps):
        super().__init__()
        self.hidden_dim = irreps_hidden.dim
        self.gate_a, self.gate_b = NormGate(irreps_hidden), NormGate(irreps_hidden)
        self.lin_a = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.lin_b = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.tp = ChannelTensorProduct(irreps_hidden, irreps_out, shared_weights=True)
        self.gate_out = NormGate(irreps_out, hidden=irreps_hidden.num_irreps)
        self.lin_out = EquivariantLinear(irreps_out, irreps_out, biases=True)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        t = self.tp(self.lin_a(self.gate_a(x)), self.lin_b(self.gate_b(x)))
        natural, flipped = torch.split(t, [self.hidden_dim, t.shape[1] - self.hidden_dim], dim=1)
        t = torch.cat([natural + x, flipped], dim=1)  # residual on the hidden irreps
        t = self.lin_out(self.gate_out(t))
        return t if previous is None else previous + t


class PairNetLayer(nn.Module):
    """Pair features for ordered pairs ``(i, j)``: ``Lin(gate(x_i)) ⊗ Lin(gate(x_j))``, every
    path weighted by a radial MLP of the distance times an MLP of the pair's invariants (scalars
    and channel-wise inner products, as in eq. 11); then gate and linear; added to the previous
    layer's pair features.

    The radial MLP has no biases, so its weights vanish with the radial basis beyond the
    cutoff: a pair farther apart than the cutoff gets no tensor-product term.

    ``radial(rbf [P, num_rbf]) -> [P, weight_numel]`` depends on the geometry only (computed
    once per batch); ``forward(x [N, hidden.dim], pair_i [P], pair_j [P], radial [P, ...],
    previous [P, out.dim] | None) -> [P, out.dim]``.
    """

    def __init__(self, irreps_hidden: o3.Irreps, irreps_out: o3.Irreps, num_rbf: int, hidden: int):
        super().__init__()
        self.channels = Channels(irreps_hidden)
        self.lin_inner = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.gate_in = NormGate(irreps_hidden)
        self.lin_in = EquivariantLinear(irreps_hidden, irreps_hidden, biases=True)
        self.tp = ChannelTensorProduct(irreps_hidden, irreps_out)
        n = self.tp.weight_numel
        self.radial_net = FullyConnectedNet([num_rbf, hidden, n], shifted_softplus)
        s = self.channels.n_scalars
        n_invariants = s + self.channels.num_channels
        self.attention = nn.Sequential(nn.Linear(n_invariants, s), nn.SiLU(), nn.Linear(s, n))
        self.gate_out = NormGate(irreps_out, hidden=irreps_hidden.num_irreps)
        self.lin_out = EquivariantLinear(irreps_out, irreps_out, biases=True)

    def radial(self, rbf: torch.Tensor) -> torch.Tensor:
        return self.radial_net(rbf)

    def forward(
        self,
        x: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
        radial: torch.Tensor,
        previous: torch.Tensor | None,
    ) -> torch.Tensor:
        s = self.channels.n_scalars
        q = self.lin_inner(x)
        qi, qj = q[pair_i], q[pair_j]
        invariants = torch.cat([qi[:, :s], qj[:, :s], self.channels.inner(qi, qj)], dim=1)
        y = self.lin_in(self.gate_in(x))
        t = self.tp(y[pair_i], y[pair_j], radial * self.attention(invariants))
        t = self.lin_out(self.gate_out(t))
        return t if previous is None else previous + t
