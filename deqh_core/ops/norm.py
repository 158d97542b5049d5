"""Equivariant layer normalisation of node features.

e3nn has no layer norm; the ``e3nn`` backend is a per-irrep reference written over e3nn's
irreps slices (one small operation per irrep entry), ``fused`` does the same with whole-vector
operations through index tables. cuEquivariance has none either; ``cueq`` uses ``fused``'s.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from deqh_core.ops.backends import EquivariantOp, OpsBackend
from deqh_core.ops.channels import Channels


class EquivariantLayerNorm(EquivariantOp):
    """Per node: the scalars are centred over their channels, then the whole feature vector is
    divided by the root mean square of its components (one invariant divisor per node, so the
    map is equivariant), then scaled per channel (and shifted on the scalars) by learned
    parameters ``weight [channels]`` and ``bias [scalar channels]``.

    Equiformer normalises every irrep type by its own divisor; one divisor for all of them is
    used here because the inputs of DEQHNet's filter often have irrep types that are zero up to
    rounding (the l > 0 parts of the overlap's on-site features, of the identity's, ...): a
    divisor of their own would blow the rounding noise up to O(1).

    ``forward(x [N, irreps.dim]) -> [N, irreps.dim]`` (scalars ``0e`` first).
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5, backend: OpsBackend = "auto"):
        super().__init__(backend)
        self.channels = Channels(o3.Irreps(irreps))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.channels.num_channels))
        self.bias = nn.Parameter(torch.zeros(self.channels.n_scalars))
        self.kernel_args = (self.channels.irreps, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)(x, self.channels, self.weight, self.bias)


class FusedLayerNorm(nn.Module):
    def __init__(self, irreps, eps, device=None, dtype=None):
        super().__init__()
        self.eps = eps

    def forward(self, x, channels: Channels, weight, bias):
        s = channels.n_scalars
        scalars = x[:, :s] - x[:, :s].mean(dim=1, keepdim=True)
        x = torch.cat([scalars, x[:, s:]], dim=1)
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        x = x * weight.index_select(0, channels.channel)
        return torch.cat([x[:, :s] + bias, x[:, s:]], dim=1)


class IrrepsLayerNorm(nn.Module):
    """The reference: the same map written irrep entry by irrep entry."""

    def __init__(self, irreps, eps, device=None, dtype=None):
        super().__init__()
        self.irreps, self.eps = irreps, eps

    def forward(self, x, channels: Channels, weight, bias):
        n = x.shape[0]
        irreps = self.irreps
        fields = [
            x[:, sl].reshape(n, mul, ir.dim) for (mul, ir), sl in zip(irreps, irreps.slices())
        ]
        scalar = [ir == o3.Irrep("0e") for _, ir in irreps]
        if any(scalar):
            mean = torch.cat([f for f, s in zip(fields, scalar) if s], dim=1).mean(dim=(1, 2))
            fields = [f - mean[:, None, None] if s else f for f, s in zip(fields, scalar)]
        mean_square = sum(f.pow(2).sum(dim=(1, 2)) for f in fields) / self.irreps.dim
        scale = torch.rsqrt(mean_square + self.eps)[:, None, None]
        out, channel, scalar = [], 0, 0
        for f, (mul, ir) in zip(fields, self.irreps):
            y = f * scale * weight[channel : channel + mul, None]
            if ir == o3.Irrep("0e"):
                y = y + bias[scalar : scalar + mul, None]
                scalar += mul
            channel += mul
            out.append(y.flatten(1))  # not reshape(n, -1): n may be 0
        return torch.cat(out, dim=1)


EquivariantLayerNorm.kernels = {"fused": FusedLayerNorm, "e3nn": IrrepsLayerNorm}
