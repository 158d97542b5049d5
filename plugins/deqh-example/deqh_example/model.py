"""``tfn-mini``: a deliberately small equivariant backbone honouring deqh's backbone contract.

Atoms start as learned element embeddings (plus the core's optional node features); a few
tensor-field-network layers pass messages along edges within a cutoff; tensor-product heads turn
node pairs into AO blocks through the core's ``BlockExpansion``.

The node-feature input and the messages use deqh's equivariant ops (``deqh_core.ops``), so the
``ops`` field picks their backend (fused, e3nn, cuEquivariance) with the same weights; the heads
use e3nn directly.
"""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from pydantic import BaseModel, ConfigDict, Field

from deqh_core.plugins import (
    AOLayout,
    BlockExpansion,
    Blocks,
    EquivariantLinear,
    OpsBackend,
    SphericalTensorProduct,
    edge_vectors,
    radius_edges,
    symmetrize,
    use_backend,
)


class TFNMiniConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(16, ge=1, description="scalar channels; l=1 and l=2 get half, a quarter")
    layers: int = Field(2, ge=1, description="message-passing layers")
    cutoff: float = Field(5.0, gt=0, description="edge cutoff, Å")
    num_basis: int = Field(8, ge=2, description="radial basis functions")
    ops: OpsBackend = Field(
        "auto", exclude=True, description="backend of deqh's ops: auto, fused, e3nn or cueq"
    )


class TFNMini(torch.nn.Module):
    def __init__(self, config: TFNMiniConfig, layout: AOLayout, node_irreps: o3.Irreps | None):
        super().__init__()
        c = config.channels
        self.config = config
        self.hidden = self.hidden_irreps(config)
        self.sh = o3.Irreps.spherical_harmonics(2)
        self.embed = torch.nn.Embedding(119, c)
        self.node_in = EquivariantLinear(node_irreps, self.hidden) if node_irreps else None
        self.convs = torch.nn.ModuleList()
        self.mix = torch.nn.ModuleList()
        self.radial = torch.nn.ModuleList()
        for _ in range(config.layers):
            # messages x_j ⊗ Y(r_ij), every path weighted per channel by a radial MLP, then
            # mixed back to the hidden irreps
            tp = SphericalTensorProduct(self.hidden, self.sh, [ir for _, ir in self.hidden])
            self.convs.append(tp)
            self.mix.append(EquivariantLinear(tp.irreps_out, self.hidden))
            self.radial.append(e3nn_nn.FullyConnectedNet([config.num_basis, 32, tp.weight_numel]))
        self.expansion = BlockExpansion(layout)
        self.diag_head = o3.FullyConnectedTensorProduct(
            self.hidden, self.hidden, self.expansion.irreps
        )
        self.off_head = o3.FullyConnectedTensorProduct(
            self.hidden, self.hidden, self.expansion.irreps
        )
        use_backend(self, config.ops)

    @staticmethod
    def hidden_irreps(config: TFNMiniConfig) -> o3.Irreps:
        """``c x 0e + c/2 x 1o + c/4 x 2e`` for ``c = config.channels``."""
        c = config.channels
        return o3.Irreps(f"{c}x0e+{max(c // 2, 1)}x1o+{max(c // 4, 1)}x2e")

    def inject(self, batch) -> dict:
        """The graph and its radial/angular features: independent of H."""
        edges = batch.pair_index[:, radius_edges(batch.pos, batch.pair_index, self.config.cutoff)]
        vec = edge_vectors(batch.pos, edges)
        dist = vec.norm(dim=-1)
        rbf = soft_one_hot_linspace(
            dist, 0.0, self.config.cutoff, self.config.num_basis, basis="smooth_finite", cutoff=True
        )
        sh = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        return {"edges": edges, "rbf": rbf * self.config.num_basis**0.5, "sh": sh}

    def forward(self, batch, node_features: torch.Tensor | None, injection: dict) -> Blocks:
        n = batch.z.shape[0]
        x = torch.zeros(n, self.hidden.dim, dtype=injection["sh"].dtype, device=batch.z.device)
        x[:, : self.config.channels] = self.embed(batch.z)
        if self.node_in is not None:
            x = x + self.node_in(node_features)
        src, dst = injection["edges"]
        sh = self.convs[0].prepare(injection["sh"])  # the harmonics' part, shared by the layers
        for tp, mix, radial in zip(self.convs, self.mix, self.radial):
            messages = mix(tp(x[src], sh, radial(injection["rbf"])))
            x = x + torch.zeros_like(x).index_add_(0, dst, messages) / 4.0
        diag = self.expansion(self.diag_head(x, x))
        i, j = batch.pair_index
        off = self.expansion(self.off_head(x[i], x[j]))
        return Blocks(*symmetrize(diag, off, batch))
