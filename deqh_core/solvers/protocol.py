"""The ``HamiltonianSolver`` protocol: what every backbone is to the core.

A solver maps a batch of molecules and (optionally) a current Hamiltonian to the next
Hamiltonian, all in block form (:mod:`deqh_core.ao.blocks`, model order, Hartree)::

    injection = solver.inject(batch)            # H-independent work, once per batch
    h_next = solver(batch, h, injection)        # h: Blocks or None

A *predictor* (``reads_h=False``) ignores ``h``: ``H = f(Z, R[, S])``. A *solver* proper
(``reads_h=True``) feeds back: the DEQ wrapper (:mod:`deqh_core.solvers.deq`) finds
``H* = f(H*, Z, R, S)``.
Both are ``HamiltonianSolver``; the difference is whether H feeds back. Work that does not depend
on H (graph, radial basis, spherical harmonics, the structure stream) belongs in ``inject`` so a
DEQ computes it once, not once per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from deqh_core.ao.basis import AOLayout


class Blocks(NamedTuple):
    """A batch's matrix in block form: ``diag [n_atoms, A, A]``, ``off [n_pairs, A, A]``."""

    diag: torch.Tensor
    off: torch.Tensor


@dataclass(frozen=True)
class Capabilities:
    """What a solver reads besides the structure (Z, R)."""

    reads_h: bool = False  # the current Hamiltonian: a solver, DEQ-able
    reads_s: bool = False  # the overlap matrix's on-site blocks
    # the current Hamiltonian's off-diagonal blocks as pair features (DEQ feedback "full")
    reads_pairs: bool = False


@runtime_checkable
class HamiltonianSolver(Protocol):
    """Protocol of every backbone (an ``nn.Module`` in practice).

    Attributes:
        capabilities: what it reads.
        layout: the AO layout its output blocks follow.
    """

    capabilities: Capabilities
    layout: AOLayout

    def inject(self, batch) -> Any:
        """H-independent part of the computation for ``batch`` (may return None)."""
        ...

    def __call__(self, batch, h: Blocks | None, injection: Any) -> Blocks:
        """Next Hamiltonian of ``batch`` in block form; exactly symmetric."""
        ...


@runtime_checkable
class StepScheduled(Protocol):
    """A module whose behaviour follows the training schedule (e.g. SPHNet's sparsity gates:
    random, then learned, then frozen selections). The trainer calls ``training_step`` on every
    such module of the model before each optimisation step, also right after a resume.

    State the schedule decides (a frozen selection, the phase) belongs in buffers: checkpoints
    then carry it, a resume is exact and evaluation uses it; the trainer copies buffers (never
    averages them) into the EMA model after each step.
    """

    def training_step(self, step: int, max_steps: int) -> None:
        """Set the module up for optimisation step ``step`` (0-based) of ``max_steps``."""
        ...
