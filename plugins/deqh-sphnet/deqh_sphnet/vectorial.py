"""SPHNet's vectorial node interaction: cheap scalar + vector (l = 1) message passing that
gives every atom an invariant descriptor, before any high-order tensor product.

Built on PyG's ViSNet representation block (``torch_geometric.nn.models.visnet.ViSNetBlock``,
the ViSNet layers the reference's LSRM block uses for its short range); only its neighbour
search is replaced, by the atom pairs of each molecule within the cutoff (no ``torch_cluster``).
The reference's long-range branch (LSRM: k-means atom groups within 9 Å) is not reimplemented:
the spherical layers that follow already see every pair within 15 Å, which on QH9 is all of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn.models.visnet import ViSNetBlock


class _MoleculeRadiusGraph(nn.Module):
    """ViSNet's ``Distance`` without ``torch_cluster``: every ordered pair of atoms of one
    molecule closer than ``cutoff`` (Å), self-loops included, as ViSNet expects.

    ``forward(pos [N, 3], batch [N]) -> (edge_index [2, E], length [E], vector [E, 3])``;
    vectorised over the batch (an ``N x N`` mask: a few hundred atoms per batch)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: torch.Tensor, batch: torch.Tensor):
        vector = pos[:, None, :] - pos[None, :, :]
        length = vector.norm(dim=-1)
        same = (batch[:, None] == batch[None, :]) & (length < self.cutoff)
        edge_index = torch.nonzero(same).t()
        vector = vector[edge_index[0], edge_index[1]]
        return edge_index, length[edge_index[0], edge_index[1]], vector


class VectorialBlock(nn.Module):
    """``forward(z [N], pos [N, 3] Å, batch [N]) -> [N, channels]``: invariant atom features
    (ViSNet's scalars after its output norm; its vectors are not used further, as in SPHNet)."""

    def __init__(self, channels: int, layers: int, heads: int, num_rbf: int, cutoff: float):
        super().__init__()
        self.visnet = ViSNetBlock(
            lmax=1,
            num_heads=heads,
            num_layers=layers,
            hidden_channels=channels,
            num_rbf=num_rbf,
            cutoff=cutoff,
            max_z=119,
        )
        self.visnet.distance = _MoleculeRadiusGraph(cutoff)

    def forward(self, z: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        scalars, _ = self.visnet(z, pos, batch)
        return scalars
