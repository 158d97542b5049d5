"""Equivariant linear layer with one matmul per irrep type.

The same map as e3nn's ``o3.Linear`` (all paths between equal irreps, "element" path
normalisation, N(0, 1) weights, optional biases on the ``0e`` outputs) with far fewer tensor
operations, which matters for small molecules where a layer's cost is its operation count.
Supports per-sample weights (``shared_weights=False``), as QHNet's heads need.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


class EquivariantLinear(nn.Module):
    """``x [N, irreps_in.dim] -> [N, irreps_out.dim]``; per output irrep type, all input
    channels of that type mixed by one ``[C_in, C_out]`` matrix.

    Args:
        irreps_in, irreps_out: irreps (an irrep type may appear in several entries).
        biases: learn a bias for the ``0e`` outputs (initialised at 0).
        shared_weights: False: weights ``[N, weight_numel]`` are passed to ``forward``
            (laid out per output type as ``[C_in, C_out]``, in the order of first appearance
            of the type in ``irreps_out``).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        biases: bool = False,
        shared_weights: bool = True,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        in_slices, out_slices = self.irreps_in.slices(), self.irreps_out.slices()
        self.shared_weights = shared_weights
        self.paths = []  # per output type reached: (input entries, dim, C_in, C_out, scale)
        sizes = []
        produced = 0  # columns of the concatenated per-type results, [C_out, dim] each
        gather = torch.full((self.irreps_out.dim,), -1, dtype=torch.long)
        for ir in dict.fromkeys(ir for _, ir in self.irreps_out):
            inputs = [i for i, (_, ir_in) in enumerate(self.irreps_in) if ir_in == ir]
            outputs = [k for k, (_, ir_out) in enumerate(self.irreps_out) if ir_out == ir]
            c_in = sum(self.irreps_in[i].mul for i in inputs)
            c_out = sum(self.irreps_out[k].mul for k in outputs)
            if not c_in:
                continue  # these outputs stay zero
            self.paths.append((inputs, ir.dim, c_in, c_out, 1.0 / math.sqrt(c_in)))
            sizes.append(c_in * c_out)
            for k in outputs:
                width = out_slices[k].stop - out_slices[k].start
                gather[out_slices[k]] = torch.arange(produced, produced + width)
                produced += width
        self.zero_outputs = bool((gather < 0).any())
        gather[gather < 0] = produced  # a zero column appended after the results
        self.register_buffer("gather", gather)
        self.identity = not self.zero_outputs and torch.equal(gather, torch.arange(produced))
        self.in_sizes = [sl.stop - sl.start for sl in in_slices]
        self.weight_sizes = sizes
        self.weight_numel = sum(sizes)
        self.weight = (
            nn.Parameter(torch.randn(self.weight_numel)) if shared_weights and sizes else None
        )
        # biases act on the 0e result (channel order of the 0e entries), before the gather
        n_scalars = sum(mul for mul, ir in self.irreps_out if ir == o3.Irrep("0e"))
        self.bias = nn.Parameter(torch.zeros(n_scalars)) if biases and n_scalars else None
        if self.bias is not None and not self.irreps_in.count("0e"):
            raise ValueError(f"biases need 0e inputs: {self.irreps_in} -> {self.irreps_out}")

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        pieces = torch.split(x, self.in_sizes, dim=1) if len(self.in_sizes) > 1 else (x,)
        weights = self.weight if self.shared_weights else weight
        weights = torch.split(weights, self.weight_sizes, dim=-1) if self.paths else ()
        outs = []
        for (inputs, dim, c_in, c_out, scale), w in zip(self.paths, weights):
            parts = [pieces[i].view(n, -1, dim) for i in inputs]
            xt = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [n, C_in, dim]
            # components become rows: [n * dim, C_in] @ [C_in, C_out]
            rows = xt.transpose(1, 2)
            if self.shared_weights:
                y = rows.reshape(n * dim, c_in) @ (w.view(c_in, c_out) * scale)
            else:
                y = torch.bmm(rows, w.view(n, c_in, c_out)) * scale
            if dim == 1:
                y = y.view(n, c_out)
                if self.bias is not None:
                    y = y + self.bias
            else:
                y = y.view(n, dim, c_out).transpose(1, 2).reshape(n, c_out * dim)
            outs.append(y)
        if self.zero_outputs:
            outs.append(x.new_zeros(n, 1))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out if self.identity else out.index_select(1, self.gather)
