"""Backbone specifications, and how the core turns any backbone into a Hamiltonian solver.

The contract a backbone implements (small on purpose)::

    model = spec.factory(config, layout, node_irreps)   # node_irreps: e3nn Irreps or None
    injection = model.inject(batch)                       # H-independent work, once per batch
    blocks = model(batch, node_features, injection)       # -> Blocks, exactly symmetric

``node_features [n_atoms, node_irreps.dim]`` are extra equivariant per-atom inputs (None when
``node_irreps`` is None). The core fills them by *diagonal reduction*
(:mod:`deqh_core.ao.reduction`) of the current Hamiltonian and/or the overlap, so a backbone that
knows nothing about H can read it and be DEQ-wrapped: ``H* = f(H*, Z, R, S)``.

A backbone whose capabilities say ``reads_pairs`` also takes the current Hamiltonian's
off-diagonal blocks (DEQ feedback ``"full"``)::

    model = spec.factory(config, layout, node_irreps, pair_irreps)
    blocks = model(batch, node_features, injection, pair_features)

``pair_features [n_pairs, pair_irreps.dim]``, one row per ordered pair of ``batch.pair_index``,
are the blocks ``H_ij`` in the irreps of their Clebsch-Gordan expansion
(:class:`~deqh_core.ao.expansion.BlockExpansion`, the output heads' own change of basis, run
backwards; its irreps sorted and simplified, e.g. ``14x0e+16x1o+5x1e+...`` for def2-SVP):
equivariant, and exact (an orthogonal map of the block's entries, in Hartree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from e3nn import o3
from pydantic import BaseModel

from deqh_core.ao.basis import AOLayout
from deqh_core.ao.expansion import BlockExpansion
from deqh_core.ao.reduction import DiagonalReduction
from deqh_core.solvers.protocol import Blocks, Capabilities
from deqh_core.util.errors import DeqhError


class BackboneError(DeqhError):
    """A backbone that cannot be found, built or used as asked."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a plugin registers for one backbone.

    Attributes:
        name: the ``--backbone`` name.
        description: one line for ``deqh backbones``.
        config: pydantic model of the backbone's hyperparameters (defaults = recommended).
        factory: ``factory(config, layout, node_irreps) -> backbone`` (see module doc).
        capabilities: whether it accepts node features, hence can read H (DEQ) and S, and
            pair features (DEQ feedback ``"full"``).
        presets: its hyperparameters for deqh's CPU-sized presets (``{"qh9-small": {...}}``):
            a preset that sizes the model (``cpu-small``, ``qh9-small``) uses these with this
            backbone instead of the preset's QHNet ones.
    """

    name: str
    description: str
    config: type[BaseModel]
    factory: Callable[[BaseModel, AOLayout, o3.Irreps | None], torch.nn.Module]
    capabilities: Capabilities = Capabilities(reads_h=True, reads_s=True)  # noqa: RUF009 (frozen)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


class ReducedSolver(torch.nn.Module):
    """A ``HamiltonianSolver`` from a backbone: H and/or S reach it as diagonal-reduction
    node features (``16x0e+8x1o+4x2e`` each, H's first); with ``reads_pairs`` (DEQ feedback
    ``"full"``) H's off-diagonal blocks also reach it, as pair features."""

    def __init__(
        self,
        spec: BackboneSpec,
        config: BaseModel,
        layout: AOLayout,
        reads_h: bool,
        reads_s: bool,
        reads_pairs: bool = False,
    ):
        super().__init__()
        caps = spec.capabilities
        if reads_pairs and not reads_h:
            raise BackboneError("pair features are the current H's blocks: they need reads_h")
        if (reads_h and not caps.reads_h) or (reads_s and not caps.reads_s):
            what = "the Hamiltonian (--deq)" if reads_h else "the overlap"
            raise BackboneError(f"backbone {spec.name!r} cannot read {what}")
        if reads_pairs and not caps.reads_pairs:
            raise BackboneError(
                f"backbone {spec.name!r} cannot read pair features (deq.feedback = full): its "
                "capabilities say reads_pairs=False; use deq.feedback = diagonal"
            )
        self.capabilities = Capabilities(reads_h=reads_h, reads_s=reads_s, reads_pairs=reads_pairs)
        self.layout = layout
        self.reduction = DiagonalReduction(layout) if (reads_h or reads_s) else None
        n_streams = int(reads_h) + int(reads_s)
        irreps = None
        if n_streams:
            irreps = o3.Irreps([(mul * n_streams, ir) for mul, ir in self.reduction.irreps_out])
        self.node_irreps = irreps
        self.pair_irreps = None
        if reads_pairs:
            # the expansion's features with its irreps sorted and merged (one entry per irrep
            # type, so a backbone's linear maps on them are one product per type): the same
            # orthogonal change of basis with its columns permuted
            expansion = BlockExpansion(layout)
            order = expansion.irreps.sort()
            slices = expansion.irreps.slices()
            columns = torch.cat([torch.arange(slices[i].start, slices[i].stop) for i in order.inv])
            self.register_buffer("pair_basis", expansion.q[:, columns].clone())
            self.pair_irreps = order.irreps.simplify()
        if self.pair_irreps is None:
            self.backbone = spec.factory(config, layout, irreps)
        else:
            self.backbone = spec.factory(config, layout, irreps, self.pair_irreps)

    def inject(self, batch) -> Any:
        rows = self.reduction.rows(batch.z) if self.reduction is not None else None
        s_features = self.reduction(batch.s_diag, rows=rows) if self.capabilities.reads_s else None
        return self.backbone.inject(batch), s_features, rows

    def forward(self, batch, h: Blocks | None, injection: Any) -> Blocks:
        inner, s_features, rows = injection
        features = []
        if self.capabilities.reads_h:
            if h is None:
                raise BackboneError("this solver reads H: give the current Hamiltonian blocks")
            features.append(self.reduction(h.diag, rows=rows))
        if s_features is not None:
            features.append(s_features)
        node = _interleave(features, self.reduction.irreps_out) if features else None
        if self.pair_irreps is not None:
            pairs = h.off.reshape(len(h.off), -1) @ self.pair_basis.to(h.off.dtype)
            return self.backbone(batch, node, inner, pairs)
        return self.backbone(batch, node, inner)


def _interleave(streams: list[torch.Tensor], irreps: o3.Irreps) -> torch.Tensor:
    """Concatenate per-stream features irrep by irrep (all streams' 0e, then all 1o, ...), the
    layout of ``Irreps([(mul * n, ir) for mul, ir in irreps])``."""
    if len(streams) == 1:
        return streams[0]
    parts = []
    for sl in irreps.slices():
        parts += [x[:, sl] for x in streams]
    return torch.cat(parts, dim=1)
