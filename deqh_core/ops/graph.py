"""Graph construction on batches, in plain torch (no torch-cluster or pyg-lib needed)."""

from __future__ import annotations

import torch

from deqh_core.ao.convention import to_model_frame


def radius_edges(pos: torch.Tensor, pair_index: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Positions of the ordered atom pairs within ``cutoff`` (Å).

    ``pair_index [2, n_pairs]`` lists every ordered pair of each molecule (the block form's
    pairs), so the edges are a subset of it; returns ``[n_edges]`` indices into it. One
    vectorised distance computation over all pairs of the batch.
    """
    src, dst = pair_index
    dist = (pos[dst] - pos[src]).norm(dim=-1)
    return torch.nonzero(dist < cutoff).squeeze(-1)


def edge_vectors(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """``[n_edges, 3]`` vectors ``pos[j] - pos[i]`` of edges ``(i, j)`` in the model frame
    (what e3nn's spherical harmonics expect, see :mod:`deqh_core.ao.convention`), Å."""
    return to_model_frame(pos[edge_index[1]] - pos[edge_index[0]])
