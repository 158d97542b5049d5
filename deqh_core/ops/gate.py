"""Gates: the equivariant nonlinearities.

* :class:`ScalarGate`: e3nn's ``Gate`` with SiLU on the scalars and sigmoid gates;
* :class:`NormGate`: QHNet's norm gate (an MLP over the scalars and the norms of all other
  channels replaces the scalars and gates the other channels).

Backends: ``fused`` (a few whole-vector operations through index tables) and ``e3nn``
(``nn.Gate``; for the norm gate ``o3.Norm`` and ``o3.ElementwiseTensorProduct``). cuEquivariance
has no gate; ``cueq`` uses ``fused``'s.
"""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from e3nn.math import normalize2mom
from torch import nn
from torch.nn import functional as F

from deqh_core.ops.backends import EquivariantOp, OpsBackend
from deqh_core.ops.channels import Channels

NORM_EPS = 1e-12
"""Added to the squared norms before the square root: keeps the norm differentiable at zero."""


class ScalarGate(EquivariantOp):
    """``silu(scalars) + gated * sigmoid(gates)`` (both activations second-moment normalised,
    as e3nn does).

    Input irreps: ``scalars + gates + gated`` with ``n_gates = gated.num_irreps`` scalar gates
    (``gates`` is ``n_gates x 0e``); output: ``scalars + gated``.

    Args:
        irreps_scalars: the scalars (``0e``).
        irreps_gated: the non-scalar irreps to gate.
        backend: ops backend.
    """

    def __init__(
        self, irreps_scalars: o3.Irreps, irreps_gated: o3.Irreps, backend: OpsBackend = "auto"
    ):
        super().__init__(backend)
        self.irreps_scalars, self.irreps_gated = o3.Irreps(irreps_scalars), o3.Irreps(irreps_gated)
        n_gates = self.irreps_gated.num_irreps
        self.irreps_in = self.irreps_scalars + o3.Irreps(f"{n_gates}x0e") + self.irreps_gated
        self.irreps_out = self.irreps_scalars + self.irreps_gated
        self.kernel_args = (self.irreps_scalars, self.irreps_gated)
        self.legacy_buffers = ("gate_of",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)(x)


class FusedScalarGate(nn.Module):
    def __init__(self, irreps_scalars, irreps_gated, device=None, dtype=None):
        super().__init__()
        n_gates = irreps_gated.num_irreps
        self.sizes = [irreps_scalars.dim, n_gates, irreps_gated.dim]
        dims = torch.tensor([ir.dim for mul, ir in irreps_gated for _ in range(mul)])
        self.register_buffer("gate_of", torch.repeat_interleave(torch.arange(n_gates), dims))
        self.silu, self.sigmoid = normalize2mom(F.silu), normalize2mom(torch.sigmoid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars, gates, gated = torch.split(x, self.sizes, dim=1)
        gates = self.sigmoid(gates).index_select(1, self.gate_of)
        return torch.cat([self.silu(scalars), gated * gates], dim=1)


class E3nnScalarGate(nn.Module):
    def __init__(self, irreps_scalars, irreps_gated, device=None, dtype=None):
        super().__init__()
        gates = f"{irreps_gated.num_irreps}x0e"
        self.gate = e3nn_nn.Gate(irreps_scalars, [F.silu], gates, [torch.sigmoid], irreps_gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)


ScalarGate.kernels = {"fused": FusedScalarGate, "e3nn": E3nnScalarGate}


class NormGate(EquivariantOp):
    """Scalars and the norms of all other channels go through an MLP; its output replaces the
    scalars and multiplies (gates) every other channel. Equivariant: the MLP sees invariants
    only.

    ``forward(x [N, irreps.dim]) -> [N, irreps.dim]`` (same irreps; scalars ``0e`` first).
    Parameters: ``mlp`` (``Linear(n, hidden)``, SiLU, ``Linear(hidden, n)``; n = channels).

    Args:
        irreps: feature irreps.
        hidden: hidden width of the MLP (default: the number of channels, as in QHNet).
        backend: ops backend.
    """

    def __init__(self, irreps: o3.Irreps, hidden: int | None = None, backend: OpsBackend = "auto"):
        super().__init__(backend)
        self.channels = Channels(irreps)
        n = self.channels.num_channels
        hidden = hidden or n
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, n))
        self.kernel_args = (self.channels.irreps,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)(x, self.channels, self.mlp)


class FusedNormGate(nn.Module):
    def __init__(self, irreps, device=None, dtype=None):
        super().__init__()

    def forward(self, x: torch.Tensor, channels: Channels, mlp: nn.Module) -> torch.Tensor:
        s = channels.n_scalars
        scalars, vectors = torch.split(x, [s, x.shape[1] - s], dim=1)
        norms = torch.sqrt(channels.vector_squares(x) + NORM_EPS)
        out = mlp(torch.cat([scalars, norms], dim=1))
        gates = out[:, s:].index_select(1, channels.vector_channel)
        return torch.cat([out[:, :s], vectors * gates], dim=1)


class E3nnNormGate(nn.Module):
    def __init__(self, irreps, device=None, dtype=None):
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir == o3.Irrep("0e")])
        vectors = o3.Irreps([(mul, ir) for mul, ir in irreps if ir != o3.Irrep("0e")])
        self.sizes = [scalars.dim, vectors.dim]
        self.norm = o3.Norm(vectors, squared=True)
        self.multiply = o3.ElementwiseTensorProduct(vectors, f"{vectors.num_irreps}x0e")

    def forward(self, x: torch.Tensor, channels: Channels, mlp: nn.Module) -> torch.Tensor:
        scalars, vectors = torch.split(x, self.sizes, dim=1)
        norms = torch.sqrt(self.norm(vectors) + NORM_EPS)
        out = mlp(torch.cat([scalars, norms], dim=1))
        s = self.sizes[0]
        return torch.cat([out[:, :s], self.multiply(vectors, out[:, s:])], dim=1)


NormGate.kernels = {"fused": FusedNormGate, "e3nn": E3nnNormGate}
