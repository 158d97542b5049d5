"""Equivariant linear layer: e3nn's ``o3.Linear`` map (all paths between equal irreps, "element"
path normalisation, N(0, 1) weights, optional biases on the ``0e`` outputs), with shared or
per-sample weights.

Weight layout (all backends): per output irrep type, in the order of its first appearance in
``irreps_out``, one ``[C_in, C_out]`` matrix over all input and all output channels of that
type (entries of one type concatenated), flattened and concatenated. Biases: one per ``0e``
output channel, in output order (as e3nn).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from deqh_core.ops.backends import EquivariantOp, OpsBackend, cueq_method


class EquivariantLinear(EquivariantOp):
    """``x [N, irreps_in.dim] -> [N, irreps_out.dim]``.

    Args:
        irreps_in, irreps_out: irreps (an irrep type may appear in several entries).
        biases: learn a bias for the ``0e`` outputs (initialised at 0).
        shared_weights: False: ``forward(x, weight [N, weight_numel])`` with per-sample weights.
        backend: ops backend (:mod:`deqh_core.ops.backends`).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        biases: bool = False,
        shared_weights: bool = True,
        backend: OpsBackend = "auto",
    ):
        super().__init__(backend)
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.shared_weights = shared_weights
        self.weight_sizes = [c_in * c_out for _, _, c_in, c_out in _type_blocks(self)]
        self.weight_numel = sum(self.weight_sizes)
        self.weight = (
            nn.Parameter(torch.randn(self.weight_numel))
            if shared_weights and self.weight_numel
            else None
        )
        n_scalars = sum(mul for mul, ir in self.irreps_out if ir == o3.Irrep("0e"))
        self.bias = nn.Parameter(torch.zeros(n_scalars)) if biases and n_scalars else None
        if self.bias is not None and not self.irreps_in.count("0e"):
            raise ValueError(f"biases need 0e inputs: {self.irreps_in} -> {self.irreps_out}")
        self.kernel_args = (self.irreps_in, self.irreps_out, shared_weights, self.bias is not None)
        self.legacy_buffers = ("gather",)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.kernel(x)(x, self.weight if self.shared_weights else weight, self.bias)


def _type_blocks(linear) -> list[tuple[o3.Irrep, list[int], int, int]]:
    """Per output irrep type reached by an input: ``(ir, input entries, C_in, C_out)``."""
    blocks = []
    for ir in dict.fromkeys(ir for _, ir in linear.irreps_out):
        inputs = [i for i, (_, ir_in) in enumerate(linear.irreps_in) if ir_in == ir]
        c_in = sum(linear.irreps_in[i].mul for i in inputs)
        c_out = sum(mul for mul, ir_out in linear.irreps_out if ir_out == ir)
        if c_in:
            blocks.append((ir, inputs, c_in, c_out))
    return blocks


def e3nn_weight_order(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> torch.Tensor:
    """Index ``perm`` with ``w_e3nn = w[..., perm]``: our layout -> e3nn's ``o3.Linear`` (one
    ``[mul_in, mul_out]`` block per pair of equal input and output entries, input-major), which
    is also cuEquivariance's ``Linear`` order."""
    offsets, start = {}, 0
    for ir in dict.fromkeys(ir for _, ir in irreps_out):
        c_in = sum(mul for mul, r in irreps_in if r == ir)
        c_out = sum(mul for mul, r in irreps_out if r == ir)
        if c_in:
            offsets[ir] = (start, c_out)
            start += c_in * c_out
    order = []
    for i, (mul_in, ir) in enumerate(irreps_in):
        if ir not in offsets:
            continue
        row = sum(mul for mul, r in irreps_in[:i] if r == ir)
        block, c_out = offsets[ir]
        for k, (mul_out, ir_out) in enumerate(irreps_out):
            if ir_out != ir:
                continue
            col = sum(mul for mul, r in irreps_out[:k] if r == ir)
            rows = torch.arange(row, row + mul_in)[:, None]
            cols = torch.arange(col, col + mul_out)[None, :]
            order.append((block + rows * c_out + cols).reshape(-1))
    return torch.cat(order) if order else torch.zeros(0, dtype=torch.long)


def _scalar_slots(irreps_out: o3.Irreps) -> torch.Tensor:
    """Positions of the ``0e`` output components, in output order."""
    slots = [
        torch.arange(sl.start, sl.stop)
        for (_, ir), sl in zip(irreps_out, irreps_out.slices())
        if ir == o3.Irrep("0e")
    ]
    return torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long)


class FusedLinear(nn.Module):
    """One matmul per output irrep type (``fused``): far fewer tensor operations than e3nn's
    one einsum per pair of entries, which is what a layer costs for small molecules."""

    def __init__(self, irreps_in, irreps_out, shared_weights, biases, device=None, dtype=None):
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.shared_weights = shared_weights
        out_slices = irreps_out.slices()
        self.paths = []  # per output type reached: (input entries, dim, C_in, C_out, scale)
        produced = 0  # columns of the concatenated per-type results, [C_out, dim] each
        gather = torch.full((irreps_out.dim,), -1, dtype=torch.long)
        for ir, inputs, c_in, c_out in _type_blocks(self):
            scalar = ir == o3.Irrep("0e")  # the only type with biases (0o is odd: none)
            self.paths.append((inputs, ir.dim, c_in, c_out, 1.0 / math.sqrt(c_in), scalar))
            for k, (_, ir_out) in enumerate(irreps_out):
                if ir_out == ir:
                    width = out_slices[k].stop - out_slices[k].start
                    gather[out_slices[k]] = torch.arange(produced, produced + width)
                    produced += width
        self.weight_sizes = [c_in * c_out for _, _, c_in, c_out, _, _ in self.paths]
        self.zero_outputs = bool((gather < 0).any())
        gather[gather < 0] = produced  # a zero column appended after the results
        self.register_buffer("gather", gather)
        self.identity = not self.zero_outputs and torch.equal(gather, torch.arange(produced))
        self.in_sizes = [sl.stop - sl.start for sl in irreps_in.slices()]

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        n = x.shape[0]
        pieces = torch.split(x, self.in_sizes, dim=1) if len(self.in_sizes) > 1 else (x,)
        weights = torch.split(weight, self.weight_sizes, dim=-1) if self.paths else ()
        outs = []
        for (inputs, dim, c_in, c_out, scale, scalar), w in zip(self.paths, weights):
            parts = [pieces[i].unflatten(1, (-1, dim)) for i in inputs]  # n may be 0
            xt = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [n, C_in, dim]
            # components become rows: [n * dim, C_in] @ [C_in, C_out]
            rows = xt.transpose(1, 2)
            if self.shared_weights:
                y = rows.reshape(n * dim, c_in) @ (w.view(c_in, c_out) * scale)
            else:
                y = torch.bmm(rows, w.view(n, c_in, c_out)) * scale
            if dim == 1:
                y = y.view(n, c_out)
                if bias is not None and scalar:
                    y = y + bias
            else:
                y = y.view(n, dim, c_out).transpose(1, 2).reshape(n, c_out * dim)
            outs.append(y)
        if self.zero_outputs:
            outs.append(x.new_zeros(n, 1))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out if self.identity else out.index_select(1, self.gather)


class E3nnLinear(nn.Module):
    """``o3.Linear`` with external weights (``e3nn``)."""

    def __init__(self, irreps_in, irreps_out, shared_weights, biases, device=None, dtype=None):
        super().__init__()
        # e3nn's generated code fails for per-sample weights with biases (e3nn 0.6): add the
        # bias here in that case
        self.linear = o3.Linear(
            irreps_in,
            irreps_out,
            internal_weights=False,
            shared_weights=shared_weights,
            biases=biases and shared_weights,
        )
        self.register_buffer("order", e3nn_weight_order(irreps_in, irreps_out))
        self.register_buffer("scalar_slots", _scalar_slots(irreps_out))

    def forward(self, x, weight, bias):
        w = weight[..., self.order] if weight is not None else x.new_zeros(0)
        if self.linear.bias_numel:
            return self.linear(x, w, bias)
        out = self.linear(x, w)
        if bias is not None:
            out = out.index_add(1, self.scalar_slots, bias.expand(len(out), -1))
        return out


class CueqLinear(nn.Module):
    """cuEquivariance's ``Linear`` in e3nn's ``mul_ir`` layout (``cueq``); biases added here."""

    def __init__(self, irreps_in, irreps_out, shared_weights, biases, device=None, dtype=None):
        super().__init__()
        # optional dependency: pip install 'deqh[cueq]'
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        method = cueq_method(torch.device(device), "fused_tp")
        self.shared_weights = shared_weights
        self.numel = e3nn_weight_order(irreps_in, irreps_out).numel()
        self.linear = None
        if self.numel:
            self.linear = cuet.Linear(
                cue.Irreps("O3", str(irreps_in)),
                cue.Irreps("O3", str(irreps_out)),
                layout=cue.mul_ir,
                shared_weights=shared_weights,
                internal_weights=False,
                method=method,
                math_dtype=dtype if method != "naive" else None,
                device=device,
            )
        self.dim_out = irreps_out.dim
        self.register_buffer("order", e3nn_weight_order(irreps_in, irreps_out))
        self.register_buffer("scalar_slots", _scalar_slots(irreps_out))

    def forward(self, x, weight, bias):
        if self.linear is None:
            out = x.new_zeros(len(x), self.dim_out)
        else:
            w = weight[..., self.order]
            out = self.linear(x, w[None] if self.shared_weights else w)
        if bias is not None:
            out = out.index_add(1, self.scalar_slots, bias.expand(len(out), -1))
        return out


EquivariantLinear.kernels = {"fused": FusedLinear, "e3nn": E3nnLinear, "cueq": CueqLinear}
