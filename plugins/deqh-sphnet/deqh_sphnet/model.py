"""SPHNet (Luo et al., ICML 2025) as a deqh backbone, DEQ-ready.

Data flow::

    inject(batch)      -- Z and R only: once per batch, also under a DEQ
      Z, R -> vectorial node interaction (ViSNet layers) -> atom scalars s_i
      pairs -> distances -> exponential-Bernstein RBFs (cutoff for the spherical layers'
      edges, pair_cutoff for the pair layers), spherical harmonics
      s -> spherical layer 1 -> x_1 -> diagonal / off-diagonal layer 1 -> f_ii, f_ij
      x_1 -> spherical layer 2 (pair gate) -> x_2 ... (pair_layers in all)
      the last off-diagonal layer's pair selection (pair gate on x_last's invariants)
      head weights from s_i (on-site) and s_i + s_j (pairs)

    forward(batch, node_features, injection[, pair_features])  -- once per DEQ iteration
      x = x_last (+ Lin(node features of H and/or S))
      last diagonal / off-diagonal layer (selected pairs only) -> f_ii, f_ij
      (+ Lin(the current H_ij's expansion features), full feedback) -> heads -> blocks

The tensor-product gates follow the training step (``training_step``, called by the trainer):
random paths for the first ``tp_random_until`` of the steps, learned ones until
``tp_freeze_at``, then frozen; their state is in buffers, so in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from deqh_core.plugins import (
    AOLayout,
    BackboneError,
    BlockExpansion,
    Blocks,
    EquivariantLinear,
    ExpansionHead,
    ExponentialBernstein,
    edge_vectors,
    head_irreps,
    natural_irreps,
    symmetrize,
    use_backend,
)
from deqh_sphnet.config import SPHNetConfig
from deqh_sphnet.gates import FROZEN, LEARNED, RANDOM, PathGate
from deqh_sphnet.layers import DiagLayer, OffDiagLayer, SphericalLayer
from deqh_sphnet.vectorial import VectorialBlock


@dataclass
class SPHNetInjection:
    """The H-independent part of a batch (N atoms, P pairs).

    Attributes:
        x: ``[N, hidden.dim]`` the last spherical layer's output.
        f_ii, f_ij: ``[N | P, interaction.dim]`` the earlier pair-construction layers' output.
        radial: ``[P, n]`` the last off-diagonal layer's radial weights.
        selection: its pairs ``(kept [K], factor [K, 1])``.
        head_ii, head_ij: element- and structure-conditioned head weights.
    """

    x: torch.Tensor
    f_ii: torch.Tensor | None
    f_ij: torch.Tensor | None
    radial: torch.Tensor
    selection: tuple[torch.Tensor, torch.Tensor]
    head_ii: tuple[torch.Tensor, torch.Tensor]
    head_ij: tuple[torch.Tensor, torch.Tensor]


class SPHNet(nn.Module):
    """SPHNet; with ``node_irreps`` it reads the diagonal-reduction features of H and/or S at
    the last pair-construction layer (a DEQ solver), with ``pair_irreps`` the current H's
    off-diagonal blocks too (full feedback).

    Args:
        config: hyperparameters.
        layout: AO layout of the output blocks (any basis set).
        node_irreps: irreps of the node features, or None (predictor).
        pair_irreps: irreps of the pair features, or None.
    """

    def __init__(
        self,
        config: SPHNetConfig,
        layout: AOLayout,
        node_irreps: o3.Irreps | None = None,
        pair_irreps: o3.Irreps | None = None,
    ):
        super().__init__()
        c = self.config = config
        self.layout = layout
        self.irreps_sh = o3.Irreps.spherical_harmonics(c.l_max)
        self.sh_degrees = list(range(c.l_max + 1))
        self.irreps_hidden = natural_irreps(c.channels, c.l_max)
        expansion = BlockExpansion(layout)
        try:
            self.irreps_interaction, self.irreps_bottleneck = head_irreps(
                self.irreps_hidden, expansion.irreps, c.channels, c.bottleneck
            )
        except ValueError as err:
            raise BackboneError(f"{layout.basis} ({layout!r}): {err}") from None
        self.vectorial = VectorialBlock(
            c.channels, c.vector_layers, c.vector_heads, c.vector_rbf, c.vector_cutoff
        )
        self.rbf = ExponentialBernstein(c.num_rbf, c.cutoff, c.rbf_alpha)
        self.pair_rbf = ExponentialBernstein(c.num_rbf, c.pair_cutoff, c.rbf_alpha)
        scalars = o3.Irreps(f"{c.channels}x0e")
        self.spherical = nn.ModuleList(
            SphericalLayer(
                scalars if k == 0 else self.irreps_hidden,
                self.irreps_hidden,
                self.irreps_sh,
                c.num_rbf,
                c.radial_hidden,
                sparsity=None if k == 0 else c.pair_share,
            )
            for k in range(c.pair_layers)
        )
        self.diag = nn.ModuleList(
            DiagLayer(self.irreps_hidden, self.irreps_interaction, c.path_share)
            for _ in range(c.pair_layers)
        )
        self.off = nn.ModuleList(
            OffDiagLayer(
                self.irreps_hidden,
                self.irreps_interaction,
                c.num_rbf,
                c.weight_width,
                c.path_share,
                pair_sparsity=None if k == 0 else c.pair_share,
            )
            for k in range(c.pair_layers)
        )
        self.out_ii = EquivariantLinear(self.irreps_interaction, self.irreps_bottleneck)
        self.out_ij = EquivariantLinear(self.irreps_interaction, self.irreps_bottleneck)
        self.head_ii = ExpansionHead(self.irreps_bottleneck, expansion, c.channels, c.weight_width)
        self.head_ij = ExpansionHead(self.irreps_bottleneck, expansion, c.channels, c.weight_width)
        self.node_irreps = o3.Irreps(node_irreps) if node_irreps is not None else None
        self.node_input = None
        if self.node_irreps is not None:
            self.node_input = EquivariantLinear(self.node_irreps, self.irreps_hidden)
        self.pair_irreps = o3.Irreps(pair_irreps) if pair_irreps is not None else None
        self.pair_input = None
        if self.pair_irreps is not None:
            self.pair_input = EquivariantLinear(self.pair_irreps, self.irreps_bottleneck)
        use_backend(self, c.ops)

    def training_step(self, step: int, max_steps: int) -> None:
        """The tensor-product gates' phase for optimisation step ``step`` of ``max_steps``
        (:class:`~deqh_core.plugins.StepScheduled`)."""
        c = self.config
        if step >= c.tp_freeze_at * max_steps:
            phase = FROZEN
        elif step >= c.tp_random_until * max_steps:
            phase = LEARNED
        else:
            phase = RANDOM
        for gate in self.modules():
            if isinstance(gate, PathGate):
                gate.schedule(phase)

    def inject(self, batch) -> SPHNetInjection:
        """Everything that does not depend on H (see the module doc)."""
        pair_i, pair_j = batch.pair_index
        pair_mol = batch.batch[pair_i]
        vectors = edge_vectors(batch.pos, batch.pair_index)  # model frame, Å
        distance = vectors.norm(dim=-1)
        rbf = self.rbf(distance)
        edges = torch.nonzero(distance < self.config.cutoff).squeeze(-1)
        sh = o3.spherical_harmonics(
            self.sh_degrees, vectors[edges], normalize=True, normalization="component"
        )
        edge = (pair_i[edges], pair_j[edges], pair_mol[edges], sh, rbf[edges])
        rbf = self.pair_rbf(distance)  # the pair layers' basis (a longer reach)
        s = self.vectorial(batch.z, batch.pos, batch.batch)
        x, f_ii, f_ij = s, None, None
        last = len(self.spherical) - 1
        for k, spherical in enumerate(self.spherical):
            x = spherical(x, *edge)
            if k < last:
                f_ii = self.diag[k](x, f_ii)
                f_ij = self.off[k](x, pair_i, pair_j, self.off[k].radial(rbf), f_ij, None)
        off = self.off[last]
        selection = off.select(off.invariants(x, pair_i, pair_j), pair_mol)
        return SPHNetInjection(
            x=x,
            f_ii=f_ii,
            f_ij=f_ij,
            radial=off.radial(rbf),
            selection=selection,
            head_ii=self.head_ii.weights(s),
            head_ij=self.head_ij.weights(s[pair_i] + s[pair_j]),
        )

    def forward(
        self,
        batch,
        node_features: torch.Tensor | None,
        injection: SPHNetInjection,
        pair_features: torch.Tensor | None = None,
    ) -> Blocks:
        """Blocks ``diag [n_atoms, A, A]`` and ``off [n_pairs, A, A]`` (model order, Hartree),
        exactly symmetric; ``pair_features [n_pairs, pair_irreps.dim]`` with full feedback."""
        x = injection.x
        if self.node_input is not None:
            if node_features is None:
                raise BackboneError(f"this SPHNet reads node features {self.node_irreps}; got None")
            x = x + self.node_input(node_features)
        pair_i, pair_j = batch.pair_index
        last = len(self.spherical) - 1
        f_ii = self.diag[last](x, injection.f_ii)
        f_ij = self.off[last](
            x, pair_i, pair_j, injection.radial, injection.f_ij, injection.selection
        )
        b_ii, b_ij = self.out_ii(f_ii), self.out_ij(f_ij)
        if self.pair_input is not None:
            if pair_features is None:
                raise BackboneError(f"this SPHNet reads pair features {self.pair_irreps}; got None")
            b_ij = b_ij + self.pair_input(pair_features)
        diag = self.head_ii(b_ii, injection.head_ii)
        off = self.head_ij(b_ij, injection.head_ij)
        return Blocks(*symmetrize(diag, off, batch))
