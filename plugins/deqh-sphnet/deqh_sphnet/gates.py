"""SPHNet's two learned sparsity gates.

* :class:`PairGate` scores every atom pair (edge) from its invariants and keeps the best-scoring
  share of each molecule's pairs; the kept pairs' features are scaled by ``sigmoid(z -
  threshold)``, the gate's only gradient, where ``z`` is the score standardised over the
  molecule's pairs.
* :class:`PathGate` keeps a share of a tensor product's coupling paths ``l1 ⊗ l2 -> l3`` on a
  three-phase schedule: random paths (a new draw every step), then the paths with the largest
  learned weights, then that selection frozen.

Deviations from the reference, and why: the pair threshold is taken per molecule, not over the
whole batch, so that a molecule's result does not depend on its batch-mates (the conformance kit
checks it); scores within a relative 1e-5 of the threshold are kept together, so that pairs
related by a molecular symmetry, whose scores agree up to rounding, share one fate and the model
stays equivariant. The factor reads the scores standardised per molecule (the reference: raw
scores): the raw factor rewards spreading every score apart, since each kept pair's factor then
rises towards 1, and with both gates on at deqh's CPU size that ran away until training
diverged (docs/backbones.md); standardised, it cannot be raised by scaling or shifting the
scores. The path weights rescale the kept paths by ``w_p / mean(w_kept)`` (the
reference divides by their sum across all outputs); only their ratios matter in both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RANDOM, LEARNED, FROZEN = 0, 1, 2


def standardized(score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``score [R]`` shifted and scaled to zero mean and unit spread within each group
    (``group [R]``, non-negative ids); unchanged by scaling or shifting a group's scores. The
    spread is floored at 1e-3 of the scores' root mean square, so that a group of scores equal
    up to rounding maps to near-zeros, not to noise of unit size."""
    size = torch.bincount(group).clamp(min=1).to(score.dtype)

    def group_mean(values: torch.Tensor) -> torch.Tensor:
        return score.new_zeros(size.shape).index_add(0, group, values) / size

    centred = score - group_mean(score)[group]
    spread = torch.maximum(group_mean(centred**2).sqrt(), 1e-3 * group_mean(score**2).sqrt())
    return centred / spread.clamp(min=torch.finfo(score.dtype).tiny)[group]


def top_share(score: torch.Tensor, group: torch.Tensor, keep: float) -> torch.Tensor:
    """Per group, the rows whose score reaches the group's ``ceil(keep * size)``-th largest
    (near-ties included): the threshold ``[R]`` of each row's group.

    ``score [R]``, ``group [R]`` (non-negative ids); vectorised (two stable sorts)."""
    if score.numel() == 0:
        return score
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # grouped, best first in each
    size = torch.bincount(group)
    start = torch.cumsum(size, 0) - size
    k = torch.ceil(size.double() * keep).long().clamp(min=1)
    kth = score[order[(start + k - 1).clamp(max=score.numel() - 1)]]
    return kth[group]


class PairGate(nn.Module):
    """``forward(invariants [R, n], group [R]) -> (kept [K], factor [K, 1])``: the kept rows
    (ascending) and their features' scale ``sigmoid(z - threshold)`` in ``[0.5, 1)``, ``z`` the
    scores standardised per group.

    Args:
        n_invariants: size of a pair's invariant descriptor.
        sparsity: share of each molecule's pairs dropped.
    """

    def __init__(self, n_invariants: int, sparsity: float):
        super().__init__()
        self.keep = round(1.0 - sparsity, 9)  # 1 - 0.7 is 0.30000000000000004
        self.score = nn.Linear(n_invariants, 1)

    def forward(
        self, invariants: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.score(invariants).squeeze(-1)
        threshold = top_share(score.detach(), group, self.keep)
        slack = 1e-5 * (threshold.abs() + 1)
        kept = torch.nonzero(score.detach() >= threshold - slack).squeeze(-1)
        # the same threshold in standardised units (z is a per-molecule increasing map of the
        # score); z carries the gradient, blind to the scores' shift and scale
        z = standardized(score, group)
        z_threshold = top_share(z.detach(), group, self.keep)
        return kept, torch.sigmoid(z[kept] - z_threshold[kept]).unsqueeze(-1)


class PathGate(nn.Module):
    """The coupling paths a tensor product computes, and each kept path's scale.

    ``forward() -> (scale [n_paths], paths)``: multiply path ``p``'s weights by ``scale[p]``
    (zero for dropped paths); ``paths`` lists the kept ones (for a backend that skips the
    rest). The selection is decided by :meth:`schedule` once per training step (all evaluations
    of that step, e.g. a DEQ's, see one selection) and lives in buffers: ``phase``, ``mask``,
    ``frozen_scale`` travel in checkpoints. In evaluation before the freeze the learned top
    paths are used.

    Args:
        n_paths: coupling paths of the tensor product.
        sparsity: share of them dropped.
    """

    def __init__(self, n_paths: int, sparsity: float):
        super().__init__()
        self.n_kept = max(1, math.ceil(round(n_paths * (1.0 - sparsity), 9)))
        self.weight = nn.Parameter(torch.ones(n_paths))
        self.register_buffer("phase", torch.tensor(RANDOM))
        self.register_buffer("mask", self._top())
        self.register_buffer("frozen_scale", torch.zeros(n_paths))

    def _top(self) -> torch.Tensor:
        mask = torch.zeros_like(self.weight, dtype=torch.bool)
        mask[torch.topk(self.weight.detach(), self.n_kept).indices] = True
        return mask

    @torch.no_grad()
    def schedule(self, phase: int) -> None:
        """Select the paths of the coming training step; ``FROZEN`` freezes for good."""
        if int(self.phase) == FROZEN:
            return
        if phase == RANDOM:
            pick = torch.randperm(self.weight.numel())[: self.n_kept].to(self.mask.device)
            self.mask.zero_()
            self.mask[pick] = True
        else:
            self.mask.copy_(self._top())
        if phase == FROZEN:
            self.frozen_scale.copy_(self._scale(self.mask))
        self.phase.fill_(phase)

    def _scale(self, mask: torch.Tensor) -> torch.Tensor:
        w = self.weight * mask
        return w / (w.sum() / self.n_kept)

    def forward(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        frozen = int(self.phase) == FROZEN
        mask = self.mask if frozen or self.training else self._top()
        scale = self.frozen_scale if frozen else self._scale(mask)
        return scale, tuple(torch.nonzero(mask).squeeze(-1).tolist())
