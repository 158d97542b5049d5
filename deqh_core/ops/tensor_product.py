"""Channel-wise tensor products: e3nn's ``TensorProduct`` with ``uvu`` / ``uuu`` instructions and
its default normalisation (component irreps, "element" paths).

* :class:`SphericalTensorProduct` (``uvu``): features ⊗ edge spherical harmonics, every path
  weighted per channel (per-sample weights, e.g. from a radial MLP);
* :class:`ChannelTensorProduct` (``uuu``): two features of one multiplicity, channel by channel,
  with shared or per-sample weights.

Weight layout (all backends): per output block, ``[mul, n_paths]`` channel-major (see each
class). Backends: ``fused`` (a few batched matmuls; the harmonics are contracted with the
Clebsch-Gordan coefficients once per geometry, shared by the layers), ``e3nn``
(``o3.TensorProduct``), ``cueq`` (cuEquivariance segmented polynomials built from e3nn's
Clebsch-Gordan coefficients, one per multiplicity so that its ``uniform_1d`` CUDA kernel
applies).

Shapes: features ``[B, irreps.dim]`` in e3nn layout; per-sample weights ``[B, weight_numel]``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from e3nn import o3
from torch import nn

from deqh_core.ops.backends import EquivariantOp, OpsBackend, cueq_method


def _cg(l1: int, l2: int, l3: int) -> torch.Tensor:
    """``[2l1+1, 2l2+1, 2l3+1]`` e3nn's real Clebsch-Gordan coefficients (float64)."""
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def _default(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.get_default_dtype())


def _mul_ir_to_ir_mul(irreps: o3.Irreps, entries: list[int]) -> list[int]:
    """Positions in ``irreps`` (e3nn's ``mul_ir`` layout) of ``entries`` laid out ``ir_mul``
    (component-major within each entry), concatenated."""
    slices = irreps.slices()
    index = []
    for i in entries:
        mul, ir = irreps[i]
        index += [slices[i].start + c * ir.dim + m for m in range(ir.dim) for c in range(mul)]
    return index


def _cueq_polynomial(subscripts: str, operands: list[list[tuple]], paths: list[tuple]):
    """A cuEquivariance polynomial ``subscripts`` whose operands 1.. have the given segment
    shapes and whose weight operand (0) gets one segment per path; ``paths`` are
    ``(segment of each operand 1.., coefficients)``."""
    # optional dependency: pip install 'deqh[cueq]'
    import cuequivariance as cue

    d = cue.SegmentedTensorProduct.from_subscripts(subscripts)
    for operand, shapes in enumerate(operands, start=1):
        for shape in shapes:
            d.add_segment(operand, shape)
    for segments, c in paths:
        d.add_path(None, *segments, c=c.numpy())
    return cue.SegmentedPolynomial.eval_last_operand(d)


def _cueq_module(polynomial, device, wanted: str) -> nn.Module:
    # optional dependency: pip install 'deqh[cueq]'
    import cuequivariance_torch as cuet

    return cuet.SegmentedPolynomial(polynomial, method=cueq_method(torch.device(device), wanted))


# ---------------------------------------------------------------------------------------------
# features ⊗ spherical harmonics (uvu)


class _Group(NamedTuple):
    mul: int
    members: list[int]  # input entries of this multiplicity
    outputs: list[tuple[o3.Irrep, list[tuple[int, int]]]]  # (ir_out, paths (input, harmonic))


def _uvu_groups(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, keep: list[o3.Irrep]) -> list[_Group]:
    groups = []
    for mul in dict.fromkeys(mul for mul, _ in irreps_in):
        members = [i for i, (m, _) in enumerate(irreps_in) if m == mul]
        outputs = []
        for ir_out in keep:
            paths = [
                (i, j)
                for i in members
                for j, (_, ir_sh) in enumerate(irreps_sh)
                if ir_out in irreps_in[i].ir * ir_sh
            ]
            if paths:
                outputs.append((ir_out, paths))
        if outputs:
            groups.append(_Group(mul, members, outputs))
    return groups


def _uvu_path_major(groups: list[_Group]) -> torch.Tensor:
    """Index ``w_paths = w[..., order]``: our layout (per output ``[mul, n_paths]``) -> one
    ``[mul]`` block per path, in (group, output, path) order: e3nn's instruction order."""
    order, offset = [], 0
    for group in groups:
        for _, paths in group.outputs:
            n = len(paths)
            order += [offset + c * n + p for p in range(n) for c in range(group.mul)]
            offset += group.mul * n
    return torch.tensor(order, dtype=torch.long)


class Prepared(NamedTuple):
    """The geometry-only operand of a :class:`SphericalTensorProduct`, for one backend."""

    backend: str
    data: Any


class SphericalTensorProduct(EquivariantOp):
    """``x ⊗ Y`` with ``uvu`` paths: node or edge features times edge spherical harmonics.

    Input irreps of equal multiplicity form a group; within a group, every path
    ``ir_in ⊗ Y_l -> ir_out`` with ``ir_out`` in ``keep`` is weighted per channel and the paths
    reaching the same output irrep are summed, with e3nn's normalisation (component
    normalisation, ``sqrt(dim_out / n_paths)`` per path). Output irreps: per group, per output
    irrep type reached, ``mul x ir`` (in ``keep``'s order). Weights: per group and output type,
    ``[mul, n_paths]`` (channel-major; paths ordered by input entry, then harmonic),
    concatenated.

    ``prepare(sh [E, irreps_sh.dim])`` is the geometry-only part (for ``fused``, the harmonics
    contracted with the coefficients), shareable by every product with the same irreps and
    backend; ``forward(x [E, irreps_in.dim], prepared, weight [E, weight_numel])``.

    Args:
        irreps_in: feature irreps.
        irreps_sh: spherical-harmonics irreps (multiplicity 1 each).
        keep: output irrep types, in order.
        backend: ops backend.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        keep: list[o3.Irrep],
        backend: OpsBackend = "auto",
    ):
        super().__init__(backend)
        irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        if any(mul != 1 for mul, _ in irreps_sh):
            raise ValueError(f"spherical harmonics must have multiplicity 1: {irreps_sh}")
        keep = [o3.Irrep(ir) for ir in keep]
        self.irreps_in, self.irreps_sh = irreps_in, irreps_sh
        groups = _uvu_groups(irreps_in, irreps_sh, keep)
        self.weight_sizes = [g.mul * len(paths) for g in groups for _, paths in g.outputs]
        self.weight_numel = sum(self.weight_sizes)
        self.irreps_out = o3.Irreps([(g.mul, ir) for g in groups for ir, _ in g.outputs])
        self.kernel_args = (irreps_in, irreps_sh, keep)
        n_outputs = len(self.weight_sizes)
        self.legacy_buffers = tuple(f"basis_{k}" for k in range(n_outputs)) + tuple(
            f"gather_{g}" for g, group in enumerate(groups) if len(group.members) > 1
        )

    def prepare(self, sh: torch.Tensor) -> Prepared:
        """Geometry-only operand from the harmonics ``sh [E, irreps_sh.dim]``."""
        kernel = self.kernel(sh)
        return Prepared(kernel.backend, kernel.prepare(sh))

    def forward(self, x: torch.Tensor, prepared: Prepared, weight: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel(x)
        if prepared.backend != kernel.backend:
            raise ValueError(
                f"operand prepared by the {prepared.backend!r} backend, but this product "
                f"computes with {kernel.backend!r}; prepare it with this backend"
            )
        return kernel(x, prepared.data, weight)


class FusedSphericalTP(nn.Module):
    """``fused``: the harmonics are contracted with the coefficients first (per geometry, shared
    by the layers); then, per output irrep, one batched matmul applies them to the
    channel-major features and one weighted sum over the paths gives the output. No tensor
    larger than ``[B, channels, Σ_paths (2l_out+1)]`` is made, and the backward pass never
    zero-fills a full-size gradient per path, which dominates e3nn's training step on a CPU
    (up to 65 paths per product at l_max = 4)."""

    def __init__(self, irreps_in, irreps_sh, keep, device=None, dtype=None):
        super().__init__()
        self.irreps_in = irreps_in
        self.sh_dim = irreps_sh.dim
        in_slices, sh_slices = irreps_in.slices(), irreps_sh.slices()
        # per group: (mul, in_dim, input irrep index | gather buffer, [(dim_out, n_paths)])
        self.groups: list[tuple] = []
        n_basis = 0
        for group in _uvu_groups(irreps_in, irreps_sh, keep):
            mul, members = group.mul, group.members
            row, in_dim = {}, 0  # where each member's components start in the group
            for i in members:
                row[i], in_dim = in_dim, in_dim + irreps_in[i].ir.dim
            outputs = []
            for ir_out, paths in group.outputs:
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
        self.weight_sizes = [mul * n for mul, _, _, outputs in self.groups for _, n in outputs]
        self.in_sizes = [sl.stop - sl.start for sl in in_slices]

    def prepare(self, sh: torch.Tensor) -> list[torch.Tensor]:
        """Per (group, output irrep) ``[E, in_dim, n_paths * dim_out]``: the harmonics
        contracted with the coefficients (columns ordered (m_out, path))."""
        out, k = [], 0
        for _, in_dim, _, outputs in self.groups:
            for _ in outputs:
                basis = getattr(self, f"basis_{k}")  # sizes spelt out: E may be 0 (one atom)
                out.append((sh @ basis).view(sh.shape[0], in_dim, basis.shape[1] // in_dim))
                k += 1
        return out

    def forward(
        self, x: torch.Tensor, basis: list[torch.Tensor], weight: torch.Tensor
    ) -> torch.Tensor:
        # split (not slice) so that the backward pass concatenates instead of zero-filling a
        # full-size gradient per slice
        n = x.shape[0]
        pieces = torch.split(x, self.in_sizes, dim=1)
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


class E3nnSphericalTP(nn.Module):
    """``e3nn``: ``o3.TensorProduct`` with one ``uvu`` instruction per path."""

    def __init__(self, irreps_in, irreps_sh, keep, device=None, dtype=None):
        super().__init__()
        groups = _uvu_groups(irreps_in, irreps_sh, keep)
        instructions, out = [], 0
        for group in groups:
            for _, paths in group.outputs:
                instructions += [(i, j, out, "uvu", True) for i, j in paths]
                out += 1
        irreps_out = o3.Irreps([(g.mul, ir) for g in groups for ir, _ in g.outputs])
        self.tp = o3.TensorProduct(
            irreps_in,
            irreps_sh,
            irreps_out,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.register_buffer("order", _uvu_path_major(groups))

    def prepare(self, sh: torch.Tensor) -> torch.Tensor:
        return sh

    def forward(self, x, sh, weight):
        return self.tp(x, sh, weight[:, self.order])


class CueqSphericalTP(nn.Module):
    """``cueq``: per multiplicity group one segmented polynomial ``[ijk]·w[u]·x[iu]·Y[j] ->
    out[ku]`` (cuEquivariance's ``ir_mul`` layout: the features are gathered into it and the
    output gathered back to e3nn's)."""

    def __init__(self, irreps_in, irreps_sh, keep, device=None, dtype=None):
        super().__init__()
        groups = _uvu_groups(irreps_in, irreps_sh, keep)
        self.polynomials = nn.ModuleList()
        self.sizes = []  # per group: weight numel
        gather = []
        out_irreps = o3.Irreps([(g.mul, ir) for g in groups for ir, _ in g.outputs])
        produced, out_start = 0, 0
        to_mul_ir = torch.zeros(out_irreps.dim, dtype=torch.long)
        for group in groups:
            mul = group.mul
            gather.append(torch.tensor(_mul_ir_to_ir_mul(irreps_in, group.members)))
            position = {i: k for k, i in enumerate(group.members)}
            paths, size = [], 0
            for k, (ir_out, group_paths) in enumerate(group.outputs):
                coef = math.sqrt(ir_out.dim / len(group_paths))
                for i, j in group_paths:
                    c = _cg(irreps_in[i].ir.l, irreps_sh[j].ir.l, ir_out.l) * coef
                    paths.append(((position[i], j, k), c))
                size += mul * len(group_paths)
                # output block k of the group, ir_mul -> mul_ir
                d = ir_out.dim
                for c in range(mul):
                    for m in range(d):
                        to_mul_ir[out_start + c * d + m] = produced + m * mul + c
                produced += d * mul
                out_start += d * mul
            polynomial = _cueq_polynomial(
                "u,iu,j,ku+ijk",
                [
                    [(irreps_in[i].ir.dim, mul) for i in group.members],
                    [(ir.dim,) for _, ir in irreps_sh],
                    [(ir.dim, mul) for ir, _ in group.outputs],
                ],
                paths,
            )
            self.polynomials.append(_cueq_module(polynomial, device, "uniform_1d"))
            self.sizes.append(size)
        for k, index in enumerate(gather):
            self.register_buffer(f"gather_{k}", index)
        self.register_buffer("to_mul_ir", to_mul_ir)
        self.register_buffer("order", _uvu_path_major(groups))

    def prepare(self, sh: torch.Tensor) -> torch.Tensor:
        return sh

    def forward(self, x, sh, weight):
        weights = torch.split(weight[:, self.order], self.sizes, dim=1)
        outs = []
        for k, (polynomial, w) in enumerate(zip(self.polynomials, weights)):
            xg = x.index_select(1, getattr(self, f"gather_{k}"))
            outs.append(polynomial([w, xg, sh])[0])
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out.index_select(1, self.to_mul_ir)


SphericalTensorProduct.kernels = {
    "fused": FusedSphericalTP,
    "e3nn": E3nnSphericalTP,
    "cueq": CueqSphericalTP,
}


# ---------------------------------------------------------------------------------------------
# feature ⊗ feature, channel by channel (uuu)


def _uuu_paths(irreps_in: o3.Irreps, types: list[o3.Irrep]) -> list[tuple[int, int, int]]:
    """``(input 1, input 2, output type)`` of every path, in weight order."""
    return [
        (i, j, t)
        for i, (_, ir1) in enumerate(irreps_in)
        for j, (_, ir2) in enumerate(irreps_in)
        for t, ir in enumerate(types)
        if ir in ir1 * ir2
    ]


class ChannelTensorProduct(EquivariantOp):
    """``x1 ⊗ x2`` with ``uuu`` paths, channel by channel, for two features with the same irreps
    of one multiplicity ``C``. Every path ``ir1 ⊗ ir2 -> ir_out`` with ``ir_out`` in
    ``irreps_out``'s types is weighted per channel; paths reaching the same output irrep are
    summed with e3nn's normalisation. Output irreps: ``C x ir`` per type of ``irreps_out``.

    Weights ``[C, n_paths]`` (channel-major; paths ordered by input 1, input 2, output):
    per sample (``forward(x1, x2, weight [B, weight_numel])``) or, with ``shared_weights``, one
    learned set (``weight``).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        shared_weights: bool = False,
        backend: OpsBackend = "auto",
    ):
        super().__init__(backend)
        irreps_in = o3.Irreps(irreps_in)
        muls = {mul for mul, _ in irreps_in}
        if len(muls) != 1:
            raise ValueError(f"ChannelTensorProduct needs one multiplicity, got {irreps_in}")
        self.mul = muls.pop()
        types = list(dict.fromkeys(ir for _, ir in o3.Irreps(irreps_out)))
        unreachable = [
            ir for ir in types if not any(ir in a * b for _, a in irreps_in for _, b in irreps_in)
        ]
        if unreachable:
            raise ValueError(f"{irreps_in} ⊗ {irreps_in} does not reach {unreachable}")
        self.irreps_in = irreps_in
        self.irreps_out = o3.Irreps([(self.mul, ir) for ir in types])
        paths = _uuu_paths(irreps_in, types)
        self.n_paths = len(paths)
        self.weight_numel = self.mul * self.n_paths
        self.weight = nn.Parameter(torch.randn(self.mul, self.n_paths)) if shared_weights else None
        self.kernel_args = (irreps_in, types, shared_weights)
        self.legacy_buffers = tuple(f"cg_{i}_{j}" for i, j in dict.fromkeys(p[:2] for p in paths))

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        weight: torch.Tensor | None = None,
        paths: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """``x1, x2 [B, irreps_in.dim]`` -> ``[B, irreps_out.dim]``.

        ``paths``: the only paths whose weights may be nonzero (a sparse selection, e.g.
        SPHNet's); the ``fused`` kernel computes just those, the others compute every path
        (the zero weights give the same result)."""
        kernel = self.kernel(x1)
        weight = self.weight if self.weight is not None else weight
        if paths is not None and isinstance(kernel, FusedChannelTP):
            return kernel(x1, x2, weight, paths)
        return kernel(x1, x2, weight)


def _fan_in(irreps_in: o3.Irreps, types: list[o3.Irrep]) -> dict[o3.Irrep, int]:
    return {ir: sum(ir in a * b for _, a in irreps_in for _, b in irreps_in) for ir in types}


def _uuu_path_major(mul: int, n_paths: int) -> torch.Tensor:
    """Index: ``[C, P]`` channel-major -> ``[P, C]`` path-major (e3nn's and cueq's order)."""
    return torch.arange(mul * n_paths).view(mul, n_paths).t().reshape(-1)


class FusedChannelTP(nn.Module):
    """``fused``: one outer product and one matmul per pair of input irreps, then each path's
    columns weighted and added to its output."""

    def __init__(self, irreps_in, types, shared_weights, device=None, dtype=None):
        super().__init__()
        self.mul = irreps_in[0].mul
        self.shared_weights = shared_weights
        self.types = types
        self.in_sizes = [sl.stop - sl.start for sl in irreps_in.slices()]
        fan_in = _fan_in(irreps_in, types)
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

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        weight: torch.Tensor,
        active: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        n, c = x1.shape[0], self.mul
        x1s, x2s = torch.split(x1, self.in_sizes, dim=1), torch.split(x2, self.in_sizes, dim=1)
        w = weight if self.shared_weights else weight.reshape(n, c, self.n_paths)
        ws = [v.unsqueeze(-1) for v in w.unbind(-1)]
        out: list[torch.Tensor | None] = [None] * len(self.types)
        keep = None if active is None else set(active)
        for i, d1, j, d2, name, paths in self.pairs:
            if keep is not None and not any(p in keep for _, _, p in paths):
                continue  # a sparse selection: none of this pair's paths is computed
            outer = x1s[i].view(n, c, d1, 1) * x2s[j].view(n, c, 1, d2)
            z = torch.matmul(outer.view(n, c, d1 * d2), getattr(self, name))
            parts = torch.split(z, [dim for dim, _, _ in paths], dim=-1) if len(paths) > 1 else [z]
            for part, (_, t, p) in zip(parts, paths):
                if keep is not None and p not in keep:
                    continue
                if out[t] is None:
                    out[t] = part * ws[p]
                else:  # in place: the sum's old value is not needed for the gradient
                    out[t].addcmul_(part, ws[p])
        dims = [ir.dim for ir in self.types]
        out = [x1.new_zeros(n, c, d) if o is None else o for o, d in zip(out, dims)]
        return torch.cat([o.flatten(1) for o in out], dim=1)  # flatten: n may be 0


class E3nnChannelTP(nn.Module):
    """``e3nn``: ``o3.TensorProduct`` with one ``uuu`` instruction per path."""

    def __init__(self, irreps_in, types, shared_weights, device=None, dtype=None):
        super().__init__()
        mul = irreps_in[0].mul
        paths = _uuu_paths(irreps_in, types)
        self.tp = o3.TensorProduct(
            irreps_in,
            irreps_in,
            o3.Irreps([(mul, ir) for ir in types]),
            [(i, j, t, "uuu", True) for i, j, t in paths],
            shared_weights=shared_weights,
            internal_weights=False,
        )
        self.shared_weights = shared_weights
        self.register_buffer("order", _uuu_path_major(mul, len(paths)))

    def forward(self, x1, x2, weight):
        w = weight.reshape(-1) if self.shared_weights else weight
        return self.tp(x1, x2, w[..., self.order])


class CueqChannelTP(nn.Module):
    """``cueq``: one segmented polynomial ``[ijk]·w[u]·x1[iu]·x2[ju] -> out[ku]`` in
    cuEquivariance's ``ir_mul`` layout."""

    def __init__(self, irreps_in, types, shared_weights, device=None, dtype=None):
        super().__init__()
        mul = irreps_in[0].mul
        fan_in = _fan_in(irreps_in, types)
        paths = [
            (
                (i, j, t),
                _cg(irreps_in[i].ir.l, irreps_in[j].ir.l, types[t].l)
                * math.sqrt(types[t].dim / fan_in[types[t]]),
            )
            for i, j, t in _uuu_paths(irreps_in, types)
        ]
        polynomial = _cueq_polynomial(
            "u,iu,ju,ku+ijk",
            [[(ir.dim, mul) for _, ir in irreps_in]] * 2 + [[(ir.dim, mul) for ir in types]],
            paths,
        )
        self.polynomial = _cueq_module(polynomial, device, "uniform_1d")
        self.shared_weights = shared_weights
        irreps_out = o3.Irreps([(mul, ir) for ir in types])
        self.register_buffer(
            "gather", torch.tensor(_mul_ir_to_ir_mul(irreps_in, list(range(len(irreps_in)))))
        )
        ir_mul = torch.tensor(_mul_ir_to_ir_mul(irreps_out, list(range(len(types)))))
        self.register_buffer("to_mul_ir", torch.argsort(ir_mul))
        self.register_buffer("order", _uuu_path_major(mul, len(paths)))

    def forward(self, x1, x2, weight):
        w = weight.reshape(1, -1) if self.shared_weights else weight
        x1, x2 = x1.index_select(1, self.gather), x2.index_select(1, self.gather)
        out = self.polynomial([w[:, self.order], x1, x2])[0]
        return out.index_select(1, self.to_mul_ir)


ChannelTensorProduct.kernels = {
    "fused": FusedChannelTP,
    "e3nn": E3nnChannelTP,
    "cueq": CueqChannelTP,
}
