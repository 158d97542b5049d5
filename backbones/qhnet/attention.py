"""DEQHNet's TransBlock: Equiformer-style graph attention over the H/S node features (eq. 10,
Fig. 2b).

Per edge ``i <- j``: ``h_ij = (Lin(x_i) + Lin(x_j)) ⊗ Y(r̂_ij)`` (a depthwise tensor product
weighted by a radial MLP); a linear map of ``h_ij`` gives the attention logits (per head,
``w · LeakyReLU(scalars)``) and the values; ``x̃_i = Σ_j softmax_j(a_ij) v_ij``, projected and
added to ``x_i``; then a gated feed-forward network, also residual. Pre-norm, as in Equiformer.
Like the public DEQHNet code, the values come from the same tensor product as the logits (no
second tensor product).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import softmax

from deqh_core.plugins import (
    EquivariantLayerNorm,
    EquivariantLinear,
    ScalarGate,
    SphericalTensorProduct,
)


class TransBlock(nn.Module):
    """One attention block over node features with irreps ``irreps`` (kept).

    ``radial(rbf [E, num_rbf]) -> [E, weight_numel]`` and ``tp.prepare(sh)`` depend on the
    geometry only (computed once per batch); ``forward(x [N, dim], edge_dst [E],
    edge_src [E], basis, radial [E, weight_numel]) -> [N, dim]``.

    Args:
        irreps: node feature irreps (scalars ``0e`` first; multiplicities divisible by
            ``heads``).
        irreps_sh: edge spherical harmonics.
        num_rbf: radial basis size.
        radial_hidden: hidden width of the radial MLP.
        heads: attention heads.
    """

    def __init__(
        self,
        irreps: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_rbf: int,
        radial_hidden: int,
        heads: int,
    ):
        super().__init__()
        irreps = o3.Irreps(irreps)
        self.irreps = irreps
        self.heads = heads
        self.norm_attention = EquivariantLayerNorm(irreps)
        self.dim = irreps.dim
        self.merge = EquivariantLinear(irreps, irreps + irreps, biases=True)  # dst, src
        self.tp = SphericalTensorProduct(irreps, irreps_sh, [ir for _, ir in irreps])
        mid = self.tp.irreps_out
        self.radial_net = FullyConnectedNet(
            [num_rbf, radial_hidden, radial_hidden, self.tp.weight_numel], F.silu
        )
        n_scalars = irreps.count("0e")
        self.n_logits = n_scalars
        self.to_logits_values = EquivariantLinear(mid, o3.Irreps(f"{n_scalars}x0e") + irreps)
        self.alpha_dot = nn.Parameter(
            torch.randn(heads, n_scalars // heads) / (n_scalars // heads) ** 0.5
        )
        head = [(c * heads) // mul for mul, ir in irreps for c in range(mul) for _ in range(ir.dim)]
        self.register_buffer("head_of", torch.tensor(head, dtype=torch.long))
        self.project = EquivariantLinear(irreps, irreps, biases=True)

        self.norm_ffn = EquivariantLayerNorm(irreps)
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
        self.gate = ScalarGate(scalars, gated)
        self.ffn_in = EquivariantLinear(irreps, self.gate.irreps_in, biases=True)
        self.ffn_out = EquivariantLinear(self.gate.irreps_out, irreps, biases=True)

    def radial(self, rbf: torch.Tensor) -> torch.Tensor:
        return self.radial_net(rbf)

    def forward(
        self,
        x: torch.Tensor,
        edge_dst: torch.Tensor,
        edge_src: torch.Tensor,
        basis: list[torch.Tensor],
        radial: torch.Tensor,
    ) -> torch.Tensor:
        to_dst, to_src = torch.split(self.merge(self.norm_attention(x)), self.dim, dim=1)
        h = self.tp(to_dst[edge_dst] + to_src[edge_src], basis, radial)
        logits, values = torch.split(self.to_logits_values(h), [self.n_logits, self.dim], dim=1)
        logits = F.leaky_relu(logits, 0.2).unflatten(1, (self.heads, -1))  # E may be 0
        alpha = softmax((logits * self.alpha_dot).sum(-1), edge_dst, num_nodes=x.shape[0])
        values = values * alpha.index_select(1, self.head_of)
        attended = values.new_zeros(x.shape[0], values.shape[1]).index_add_(0, edge_dst, values)
        x = x + self.project(attended)
        return x + self.ffn_out(self.gate(self.ffn_in(self.norm_ffn(x))))
