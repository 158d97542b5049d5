"""Channel bookkeeping of e3nn features, so that per-channel operations are single tensor ops.

A feature vector with irreps ``m1 x ir1 + m2 x ir2 + ...`` has ``m1 + m2 + ...`` *channels*
(one copy of one irrep each). Norms, inner products and gates act per channel; with the index
tables below each is one ``index_add`` or one gather over the whole vector instead of a Python
loop over irreps.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn


class Channels(nn.Module):
    """Index tables of ``irreps`` whose scalars (``0e``) come first.

    Buffers:
        channel: ``[dim]`` channel of every component.
        vector_channel: ``[dim - n_scalars]`` the same for the non-scalar components, counted
            from the first non-scalar channel.
        vector_inv_dim: ``[num_channels - n_scalars]`` ``1 / (2l+1)`` of every non-scalar
            channel.

    Attributes:
        irreps: the irreps.
        n_scalars: number of leading ``0e`` channels (= their dimension).
        num_channels: total number of channels.
    """

    def __init__(self, irreps: o3.Irreps):
        super().__init__()
        irreps = o3.Irreps(irreps)
        self.irreps = irreps
        n_scalars = 0
        for mul, ir in irreps:
            if ir != o3.Irrep("0e"):
                break
            n_scalars += mul
        if sum(mul for mul, ir in irreps if ir == o3.Irrep("0e")) != n_scalars:
            raise ValueError(f"the 0e channels must come first in {irreps}")
        self.n_scalars = n_scalars
        self.num_channels = irreps.num_irreps
        dims = torch.tensor([ir.dim for mul, ir in irreps for _ in range(mul)])
        channel = torch.repeat_interleave(torch.arange(len(dims)), dims)
        self.register_buffer("channel", channel)
        self.register_buffer("vector_channel", channel[n_scalars:] - n_scalars)
        self.register_buffer("vector_inv_dim", 1.0 / dims[n_scalars:].to(torch.get_default_dtype()))

    def vector_squares(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, dim] -> [N, num_channels - n_scalars]``: squared norm of every non-scalar
        channel."""
        v = x[:, self.n_scalars :]
        out = v.new_zeros(x.shape[0], self.num_channels - self.n_scalars)
        return out.index_add_(1, self.vector_channel, v * v)

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[N, dim] x [N, dim] -> [N, num_channels - n_scalars]``: per non-scalar channel the
        inner product over its components divided by ``2l+1`` (eq. 11)."""
        s = self.n_scalars
        product = a[:, s:] * b[:, s:]
        out = product.new_zeros(a.shape[0], self.num_channels - s)
        return out.index_add_(1, self.vector_channel, product) * self.vector_inv_dim
