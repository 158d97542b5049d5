"""Tensor expansion: equivariant features <-> an AO block (paper eq. 14).

An ``[A, A]`` block in model order transforms as ``layout.irreps ⊗ layout.irreps``. e3nn's
``FullTensorProduct`` of the layout's irreps with themselves, evaluated on basis vectors, is an
orthogonal change of basis ``Q [A*A, D]`` (Clebsch–Gordan coefficients) between the block's
entries and irreps ``irreps`` of total dimension ``D = A*A``. A head predicts features with those
irreps; ``BlockExpansion`` turns them into blocks (and back).
"""

from __future__ import annotations

import torch
from e3nn import o3

from deqh_core.ao.basis import AOLayout


class BlockExpansion(torch.nn.Module):
    """``features [N, D] <-> blocks [N, A, A]``; equivariant both ways.

    Attributes:
        irreps: e3nn irreps of the features (unsimplified, in the tensor product's path order).
    """

    def __init__(self, layout: AOLayout):
        super().__init__()
        self.width = layout.width
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # e3nn builds its CG tables in the default dtype
        try:
            tp = o3.FullTensorProduct(layout.irreps, layout.irreps)
            eye = torch.eye(layout.width)
            q = tp(eye.repeat_interleave(layout.width, 0), eye.repeat(layout.width, 1))
        finally:
            torch.set_default_dtype(default)
        self.irreps = tp.irreps_out
        self.register_buffer("q", q.to(default))  # [A*A, D], orthogonal

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> ``[N, A, A]``."""
        return (features @ self.q.T).unflatten(-1, (self.width, self.width))

    def inverse(self, blocks: torch.Tensor) -> torch.Tensor:
        """``[N, A, A]`` -> ``[N, D]``."""
        return blocks.reshape(-1, self.width * self.width) @ self.q
