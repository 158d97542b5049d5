"""Hamiltonian solvers: the protocol every backbone meets, and what turns one into a DEQ.

* :mod:`~.protocol` -- ``HamiltonianSolver``, ``Blocks``, ``Capabilities``
* :mod:`~.backbone` -- ``BackboneSpec`` (what a plugin registers) and ``ReducedSolver`` (any
  backbone as a solver, through node features of the diagonal reduction)
* :mod:`~.deq` -- ``DEQConfig`` and ``DEQHamiltonianSolver`` over torchdeq
* :mod:`~.fixed_point` -- fixed-point iteration stopped per molecule, on the device
* :mod:`~.prior` -- the prior Hamiltonian ``H0``: ``PriorResidual``, ``InitialGuess``,
  ``PriorCache``
"""

from deqh_core.solvers.backbone import BackboneError, BackboneSpec, ReducedSolver
from deqh_core.solvers.deq import DEQConfig, DEQDiagnostics, DEQHamiltonianSolver
from deqh_core.solvers.prior import InitialGuess, PriorCache, PriorResidual
from deqh_core.solvers.protocol import Blocks, Capabilities, HamiltonianSolver

__all__ = [
    "BackboneError",
    "BackboneSpec",
    "Blocks",
    "Capabilities",
    "DEQConfig",
    "DEQDiagnostics",
    "DEQHamiltonianSolver",
    "HamiltonianSolver",
    "InitialGuess",
    "PriorCache",
    "PriorResidual",
    "ReducedSolver",
]
