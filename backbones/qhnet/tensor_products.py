"""Fused channel-wise tensor products (the same maps as e3nn's ``TensorProduct`` with ``uvu`` /
``uuu`` instructions and its default normalisation, computed with a few batched matmuls).

e3nn evaluates one einsum per path and, on the way back, materialises a full-size gradient for
every slice of the inputs, which dominates QHNet's training step on a CPU (up to 65 paths per
product at l_max = 4). Here the Clebsch-Gordan coefficients are grouped and concatenated once,
at construction, and no tensor larger than ``[B, channels, Σ_paths (2l_out+1)]`` is made:

* :class:`SphericalTensorProduct` (``uvu``, features ⊗ edge spherical harmonics): the
  harmonics are contracted with the coefficients first (:meth:`~SphericalTensorProduct.basis`,
  which depends on the geometry only and is shared by every layer with the same irreps); then,
  per output irrep, one batched matmul applies them to the channel-major features and one
  weighted sum over the paths gives the output;
* :class:`ChannelTensorProduct` (``uuu``, channel by channel): one outer product and one matmul
  per pair of input irreps, then each path's columns weighted and added to its output.

Shapes: features ``[B, irreps.dim]`` in e3nn layout; per-sample weights ``[B, weight_numel]``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


def _cg(l1: int, l2: int, l3: int) -> torch.Tensor:
    """``[2l1+1, 2l2+1, 2l3+1]`` e3nn's real Clebsch-Gordan coefficients (float64)."""
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def _default(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.get_default_dtype())


class SphericalTensorProduct(nn.Module):
    """``x ⊗ Y`` with ``uvu`` paths: node or edge features times edge spherical harmonics.

    Input irreps of equal multiplicity form a group; within a group, every path
    ``ir_in ⊗ Y_l -> ir_out`` with ``ir_out`` in ``keep`` is weighted per channel and the paths
    reaching the same output irrep are summed, with e3nn's normalisation (component
    normalisation, ``sqrt(dim_out / n_paths)`` per path). Output irreps: per group, per output
    irrep type reached, ``mul x ir`` (in ``keep``'s order). Weights: per group and output type,
    ``[mul, n_paths]`` (channel-major), concatenated.

    Args:
        irreps_in: feature irreps.
        irreps_sh: spherical-harmonics irreps (multiplicity 1 each).
        keep: output irrep types, in order.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, keep: list[o3.Irrep]):
        super().__init__()
        irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        if any(mul != 1 for mul, _ in irreps_sh):
            raise ValueError(f"spherical harmonics must have multiplicity 1: {irreps_sh}")
        keep = [o3.Irrep(ir) for ir in keep]
        self.irreps_in, self.irreps_sh = irreps_in, irreps_sh
        self.sh_dim = irreps_sh.dim
        in_slices, sh_slices = irreps_in.slices(), irreps_sh.slices()
        # per group: (mul, in_dim, input irrep index | gather buffer, [(dim_out, n_paths)])
        self.groups: list[tuple] = []
        out_irreps, weight_sizes, n_basis = [], [], 0
        for mul in dict.fromkeys(mul for mul, _ in irreps_in):
            members = [i for i, (m, _) in enumerate(irreps_in) if m == mul]
            row, in_dim = {}, 0  # where each member's components start in the group
            for i in members:
                row[i], in_dim = in_dim, in_dim + irreps_in[i].ir.dim
            outputs = []
            for ir_out in keep:
                paths = [
                    (i, j)
                    for i in members
                    for j, (_, ir_sh) in enumerate(irreps_sh)
                    if ir_out in irreps_in[i].ir * ir_sh
                ]
                if not paths:
                    continue
                coef = math.sqrt(ir_out.dim / len(paths))
                basis = torch.zeros(
                    self.sh_dim, in_dim, len(paths) * ir_out.dim, dtype=torch.float64
                )
                for n, (i, j) in enumerate(paths):
                    cg = _cg(irreps_in[i].ir.l, irreps_sh[j].ir.l, ir_out.l) * coef
                    rows = slice(row[i], row[i] + irreps_in[i].ir.dim)
                    # columns (m, path): the path sum is then over the innermost axis
                    cols = slice(n, n + len(paths) * ir_out.dim, len(paths))
                    basis[sh_slices[j], rows, cols] = cg.permute(1, 0, 2)
                self.register_buffer(f"basis_{n_basis}", _default(basis.reshape(self.sh_dim, -1)))
                n_basis += 1
                outputs.append((ir_out.dim, len(paths)))
                weight_sizes.append(mul * len(paths))
                out_irreps.append((mul, ir_out))
            if not outputs:
                continue
            if len(members) == 1:
                source = members[0]
            else:  # channel-major gather: [mul, Σ dims] of the group's irreps
                index = [
                    in_slices[i].start + c * irreps_in[i].ir.dim + m
                    for c in range(mul)
                    for i in members
                    for m in range(irreps_in[i].ir.dim)
                ]
                source = f"gather_{len(self.groups)}"
                self.register_buffer(source, torch.tensor(index, dtype=torch.long))
            self.groups.append((mul, in_dim, source, outputs))
        self.n_basis = n_basis
        self.weight_sizes = weight_sizes
        self.weight_numel = sum(weight_sizes)
        self.irreps_out = o3.Irreps(out_irreps)

    def basis(self, sh: torch.Tensor) -> list[torch.Tensor]:
        """Geometry-only part: per (group, output irrep) ``[E, in_dim, n_paths * dim_out]``, the
        harmonics contracted with the coefficients (columns ordered (m_out, path)).
        ``sh [E, irreps_sh.dim]``."""
        out, k = [], 0
        for _, in_dim, _, outputs in self.groups:
            for _ in outputs:
                out.append((sh @ getattr(self, f"basis_{k}")).view(sh.shape[0], in_dim, -1))
                k += 1
        return out

    def forward(
        self, x: torch.Tensor, basis: list[torch.Tensor], weight: torch.Tensor
    ) -> torch.Tensor:
        """``x [E, irreps_in.dim]``, ``basis`` from :meth:`basis`, ``weight [E, weight_numel]``
        -> ``[E, irreps_out.dim]``."""
        # split (not slice) so that the backward pass concatenates instead of zero-filling a
        # full-size gradient per slice
        n = x.shape[0]
        pieces = torch.split(x, [sl.stop - sl.start for sl in self.irreps_in.slices()], dim=1)
        weights = torch.split(weight, self.weight_sizes, dim=1)
        outs, k = [], 0
        for mul, in_dim, source, outputs in self.groups:
            if isinstance(source, int):
                xg = pieces[source].view(n, mul, in_dim)
            else:
                xg = x.index_select(1, getattr(self, source)).view(n, mul, in_dim)
            for dim, n_paths in outputs:
                y = torch.bmm(xg, basis[k]).view(n * mul, dim, n_paths)
                # weighted sum over the paths: per (sample, channel) a [dim, P] @ [P] product
                out = torch.bmm(y, weights[k].reshape(n * mul, n_paths, 1))
                outs.append(out.view(n, mul * dim))
                k += 1
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class ChannelTensorProduct(nn.Module):
    """``x1 ⊗ x2`` with ``uuu`` paths, channel by channel, for two features with the same irreps
    of one multiplicity ``C``. Every path ``ir1 ⊗ ir2 -> ir_out`` with ``ir_out`` in
    ``irreps_out``'s types is weighted per channel; paths reaching the same output irrep are
    summed with e3nn's normalisation. Output irreps: ``C x ir`` per type of ``irreps_out``.

    Weights ``[C, n_paths]`` (channel-major; paths ordered by input 1, input 2, output):
    per sample (``forward(x1, x2, weight [B, weight_numel])``) or, with ``shared_weights``, one
    learned set.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, shared_weights: bool = False):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        muls = {mul for mul, _ in irreps_in}
        if len(muls) != 1:
            raise ValueError(f"ChannelTensorProduct needs one multiplicity, got {irreps_in}")
        self.mul = muls.pop()
        types = list(dict.fromkeys(ir for _, ir in o3.Irreps(irreps_out)))
        self.irreps_in = irreps_in
        self.irreps_out = o3.Irreps([(self.mul, ir) for ir in types])
        self.in_sizes = [sl.stop - sl.start for sl in irreps_in.slices()]
        fan_in = {
            ir: sum(ir in ir1 * ir2 for _, ir1 in irreps_in for _, ir2 in irreps_in) for ir in types
        }
        unreachable = [
            ir for ir in types if not any(ir in a * b for _, a in irreps_in for _, b in irreps_in)
        ]
        if unreachable:
            raise ValueError(f"{irreps_in} ⊗ {irreps_in} does not reach {unreachable}")
        self.types = types
        self.pairs = []  # (input 1, dim 1, input 2, dim 2, CG buffer, [(dim, type, path)])
        n_paths = 0
        for i, (_, ir1) in enumerate(irreps_in):
            for j, (_, ir2) in enumerate(irreps_in):
                own = [t for t, ir in enumerate(types) if ir in ir1 * ir2]
                if not own:
                    continue
                blocks, paths = [], []
                for t in own:
                    ir = types[t]
                    coef = math.sqrt(ir.dim / fan_in[ir])
                    blocks.append(_cg(ir1.l, ir2.l, ir.l).reshape(-1, ir.dim) * coef)
                    paths.append((ir.dim, t, n_paths))
                    n_paths += 1
                name = f"cg_{i}_{j}"
                self.register_buffer(name, _default(torch.cat(blocks, dim=1)))
                self.pairs.append((i, ir1.dim, j, ir2.dim, name, paths))
        self.n_paths = n_paths
        self.weight_numel = self.mul * n_paths
        self.weight = nn.Parameter(torch.randn(self.mul, n_paths)) if shared_weights else None

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x1, x2 [B, irreps_in.dim]`` -> ``[B, irreps_out.dim]``."""
        n, c = x1.shape[0], self.mul
        x1s, x2s = torch.split(x1, self.in_sizes, dim=1), torch.split(x2, self.in_sizes, dim=1)
        w = self.weight if self.weight is not None else weight.view(n, c, self.n_paths)
        ws = [v.unsqueeze(-1) for v in w.unbind(-1)]
        out: list[torch.Tensor | None] = [None] * len(self.types)
        for i, d1, j, d2, name, paths in self.pairs:
            outer = x1s[i].view(n, c, d1, 1) * x2s[j].view(n, c, 1, d2)
            z = torch.matmul(outer.view(n, c, d1 * d2), getattr(self, name))
            parts = torch.split(z, [dim for dim, _, _ in paths], dim=-1) if len(paths) > 1 else [z]
            for part, (_, t, p) in zip(parts, paths):
                if out[t] is None:
                    out[t] = part * ws[p]
                else:  # in place: the sum's old value is not needed for the gradient
                    out[t].addcmul_(part, ws[p])
        return torch.cat([o.reshape(n, -1) for o in out], dim=1)
