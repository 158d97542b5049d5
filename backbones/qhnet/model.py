"""QHNet (predictor) and DEQHNet (reads H and/or S) as one deqh backbone.

Data flow (paper Fig. 2)::

    inject(batch)      -- depends on Z and R only: once per batch, also under a DEQ
      pairs -> distances -> exponential-Bernstein RBF; edges = pairs within the cutoff
      edges -> spherical harmonics Y(r̂_ij) up to l_max
      Z -> embedding -> L ConvNet layers -> structure features x_k
      x_k of the last interaction layers -> self / pair interaction layers -> f_ii, f_ij
      -> bottleneck features b_ii, b_ij; element-conditioned head weights;
      the filter's geometry-only inputs (DEQHNet)

    forward(batch, node_features, injection[, pair_features])   -- once per DEQ iteration
      DEQHNet only: node features of H/S -> filter (TransBlocks, fusion with x_k,
      self / pair layers) -> additions to b_ii, b_ij
      full feedback only: the current H_ij's expansion features -> linear -> addition to b_ij
      b_ii, b_ij -> expansion heads -> blocks, symmetrised exactly

Pairs: the off-diagonal blocks are needed for every ordered pair of ``batch.pair_index``.
Messages (ConvNet, TransBlock) flow along the pairs within ``cutoff`` only; the pair layers and
heads run on all pairs, and a pair beyond the cutoff, whose radial weights vanish, gets its block
from the two atoms' features and elements alone. With the paper's 15 Å cutoff every pair of a
QH9 or MD17 molecule is an edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from deqh_backbones.qhnet.config import QHNetConfig
from deqh_backbones.qhnet.conv import ConvNetLayer
from deqh_backbones.qhnet.filter import DEQHNetFilter, FilterInjection
from deqh_backbones.qhnet.interaction import PairNetLayer, SelfNetLayer
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


@dataclass
class QHNetInjection:
    """Everything of a batch that does not depend on H (see module doc); N atoms, P pairs,
    E edges.

    Attributes:
        edge_dst, edge_src: ``[E]`` receiving atom i and sending atom j of each edge.
        bottleneck_ii, bottleneck_ij: ``[N | P, bottleneck irreps dim]`` structure features
            at the heads' input.
        head_ii, head_ij: element-conditioned head weights and biases of atoms / pairs.
        filter: the DEQHNet filter's geometry-only inputs (None for the predictor).
    """

    edge_dst: torch.Tensor
    edge_src: torch.Tensor
    bottleneck_ii: torch.Tensor
    bottleneck_ij: torch.Tensor
    head_ii: tuple[torch.Tensor, torch.Tensor]
    head_ij: tuple[torch.Tensor, torch.Tensor]
    filter: FilterInjection | None


class QHNet(nn.Module):
    """The QHNet backbone; with ``node_irreps`` (diagonal-reduction features of H and/or S) it
    adds DEQHNet's filter (:class:`~deqh_backbones.qhnet.filter.DEQHNetFilter`).

    Args:
        config: hyperparameters.
        layout: AO layout of the output blocks (any basis set).
        node_irreps: irreps of the node features the core passes to ``forward``, or None for
            the plain predictor ``H = f(Z, R)``.
        pair_irreps: irreps of the pair features (the current H's off-diagonal blocks, DEQ
            feedback ``"full"``), or None.
    """

    def __init__(
        self,
        config: QHNetConfig,
        layout: AOLayout,
        node_irreps: o3.Irreps | None = None,
        pair_irreps: o3.Irreps | None = None,
    ):
        super().__init__()
        c = config
        self.config = c
        self.layout = layout
        self.irreps_sh = o3.Irreps.spherical_harmonics(c.l_max)
        self.sh_degrees = list(range(c.l_max + 1))  # a list: torch.compile cannot guard Irreps
        self.irreps_hidden = natural_irreps(c.channels, c.l_max)
        expansion = BlockExpansion(layout)
        block_irreps = expansion.irreps
        try:
            self.irreps_interaction, self.irreps_bottleneck = head_irreps(
                self.irreps_hidden, block_irreps, c.channels, c.bottleneck
            )
        except ValueError as err:
            raise BackboneError(f"{layout.basis} ({layout!r}): {err}") from None
        self.first_interaction = c.layers - c.interaction_layers

        self.embedding = nn.Embedding(119, c.channels)
        self.rbf = ExponentialBernstein(c.num_rbf, c.cutoff, c.rbf_alpha)
        self.convs = nn.ModuleList(
            ConvNetLayer(
                o3.Irreps(f"{c.channels}x0e") if k == 0 else self.irreps_hidden,
                self.irreps_hidden,
                self.irreps_sh,
                c.num_rbf,
                c.radial_hidden,
            )
            for k in range(c.layers)
        )
        self.selfs = nn.ModuleList(
            SelfNetLayer(self.irreps_hidden, self.irreps_interaction)
            for _ in range(c.interaction_layers)
        )
        self.pairs = nn.ModuleList(
            PairNetLayer(self.irreps_hidden, self.irreps_interaction, c.num_rbf, c.weight_width)
            for _ in range(c.interaction_layers)
        )
        self.out_ii = EquivariantLinear(self.irreps_interaction, self.irreps_bottleneck)
        self.out_ij = EquivariantLinear(self.irreps_interaction, self.irreps_bottleneck)
        self.head_ii = ExpansionHead(self.irreps_bottleneck, expansion, c.channels, c.weight_width)
        self.head_ij = ExpansionHead(
            self.irreps_bottleneck, expansion, 2 * c.channels, c.weight_width
        )
        self.node_irreps = o3.Irreps(node_irreps) if node_irreps is not None else None
        self.filter = None
        if self.node_irreps is not None:
            self.filter = DEQHNetFilter(
                c,
                self.node_irreps,
                self.irreps_hidden,
                self.irreps_sh,
                block_irreps,
                self.irreps_bottleneck,
            )
        # full feedback: H_ij enters the pair head's bottleneck through one equivariant linear
        # map per pair, so the off-diagonal output can correct the current off-diagonal block
        # directly (the heads' per-element weights then act on it as on the structure features)
        self.pair_irreps = o3.Irreps(pair_irreps) if pair_irreps is not None else None
        self.pair_input = None
        if self.pair_irreps is not None:
            self.pair_input = EquivariantLinear(self.pair_irreps, self.irreps_bottleneck)
        use_backend(self, c.ops)

    def inject(self, batch) -> QHNetInjection:
        """The H-independent part: graph, radial basis, spherical harmonics, the ConvNet stream,
        the structure interaction features and every weight that depends on geometry or
        elements only."""
        pair_i, pair_j = batch.pair_index
        vectors = edge_vectors(batch.pos, batch.pair_index)  # model frame, Å
        distance = vectors.norm(dim=-1)
        rbf = self.rbf(distance)
        edges = torch.nonzero(distance < self.config.cutoff).squeeze(-1)
        if len(edges) == len(distance):  # every pair is an edge (the usual case): no gathers
            edge_dst, edge_src, edge_rbf, edge_vec = pair_i, pair_j, rbf, vectors
        else:
            edge_dst, edge_src = pair_i[edges], pair_j[edges]
            edge_rbf, edge_vec = rbf[edges], vectors[edges]
        sh = o3.spherical_harmonics(
            self.sh_degrees, edge_vec, normalize=True, normalization="component"
        )
        embedding = self.embedding(batch.z)
        # layers with the same input irreps share the harmonics' contraction with their CGs
        bases = [conv.tp.prepare(sh) for conv in self.convs[:2]]
        x, structure = embedding, []
        for k, conv in enumerate(self.convs):
            x = conv(x, edge_dst, edge_src, bases[min(k, 1)], edge_rbf)
            if k >= self.first_interaction:
                structure.append(x)
        f_ii = f_ij = None
        for m, x in enumerate(structure):
            f_ii = self.selfs[m](x, f_ii)
            f_ij = self.pairs[m](x, pair_i, pair_j, self.pairs[m].radial(rbf), f_ij)
        pair_embedding = torch.cat([embedding[pair_i], embedding[pair_j]], dim=1)
        return QHNetInjection(
            edge_dst=edge_dst,
            edge_src=edge_src,
            bottleneck_ii=self.out_ii(f_ii),
            bottleneck_ij=self.out_ij(f_ij),
            head_ii=self.head_ii.weights(embedding),
            head_ij=self.head_ij.weights(pair_embedding),
            filter=None
            if self.filter is None
            else self.filter.prepare(sh, edge_rbf, rbf, structure),
        )

    def forward(
        self,
        batch,
        node_features: torch.Tensor | None,
        injection: QHNetInjection,
        pair_features: torch.Tensor | None = None,
    ) -> Blocks:
        """Blocks ``diag [n_atoms, A, A]`` and ``off [n_pairs, A, A]`` (model order, Hartree),
        exactly symmetric; ``pair_features [n_pairs, pair_irreps.dim]`` with full feedback."""
        b_ii, b_ij = injection.bottleneck_ii, injection.bottleneck_ij
        if self.filter is not None:
            if node_features is None:
                raise BackboneError(
                    f"this QHNet reads node features {self.node_irreps} (H and/or S); got None"
                )
            pair_i, pair_j = batch.pair_index
            d_ii, d_ij = self.filter(
                node_features,
                injection.filter,
                injection.edge_dst,
                injection.edge_src,
                pair_i,
                pair_j,
            )
            b_ii, b_ij = b_ii + d_ii, b_ij + d_ij
        if self.pair_input is not None:
            if pair_features is None:
                raise BackboneError(
                    f"this QHNet reads pair features {self.pair_irreps} (full feedback); got None"
                )
            b_ij = b_ij + self.pair_input(pair_features)
        diag = self.head_ii(b_ii, injection.head_ii)
        off = self.head_ij(b_ij, injection.head_ij)
        return Blocks(*symmetrize(diag, off, batch))
