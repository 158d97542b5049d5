"""Radial basis of QHNet and SPHNet: exponential Bernstein polynomials times a smooth cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def smooth_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``exp(-r² / (c² - r²))`` for ``r < c``, 0 beyond: 1 at 0, all derivatives vanish at
    ``c``. ``r`` in Å, any shape."""
    inside = r < cutoff
    safe = torch.where(inside, r, torch.zeros_like(r))
    value = torch.exp(-(safe * safe) / ((cutoff - safe) * (cutoff + safe)))
    return torch.where(inside, value, torch.zeros_like(r))


class ExponentialBernstein(nn.Module):
    """``K`` exponential Bernstein functions of the distance (Unke et al., SpookyNet):

    ``b_k(r) = C(K-1, k) · e^{-α r (K-1-k)} · (1 - e^{-α r})^k · f_cut(r)``

    with a learned decay ``α > 0`` (1/Å) and the smooth cutoff :func:`smooth_cutoff`.
    ``forward(r [E]) -> [E, K]``, ``r`` in Å (> 0).
    """

    def __init__(self, num_basis: int, cutoff: float, alpha: float = 0.5):
        super().__init__()
        self.cutoff = float(cutoff)
        k = torch.arange(num_basis, dtype=torch.float64)
        n = num_basis - 1 - k
        log_binomial = math.lgamma(num_basis) - torch.lgamma(k + 1) - torch.lgamma(n + 1)
        self.register_buffer("log_binomial", log_binomial.to(torch.get_default_dtype()))
        self.register_buffer("k", k.to(torch.get_default_dtype()))
        self.register_buffer("n", n.to(torch.get_default_dtype()))
        # softplus-parametrised so that α stays positive; initialised at ``alpha``
        self.raw_alpha = nn.Parameter(torch.tensor(math.log(math.expm1(alpha))))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = -F.softplus(self.raw_alpha) * r.clamp(min=1e-6)[:, None]
        log_b = self.log_binomial + self.n * x + self.k * torch.log(-torch.expm1(x))
        return torch.exp(log_b) * smooth_cutoff(r, self.cutoff)[:, None]
