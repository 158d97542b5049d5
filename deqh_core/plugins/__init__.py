"""The plugin author's one import: everything a backbone plugin needs (docs/plugins.md).

::

    from deqh_core.plugins import AOLayout, BackboneSpec, Blocks, Capabilities, hookimpl

* hooks -- ``hookimpl`` marks a plugin's implementations of the hook specifications in
  :mod:`~.hookspecs` (``deqh_backbones``, ``deqh_register_commands``)
* registering -- ``BackboneSpec``, ``Capabilities``, ``BackboneError``; ``get_backbone`` and
  ``backbones`` look them up (:mod:`~.manager`, the one plugin manager)
* the contract -- ``HamiltonianSolver``, ``Blocks``: what a backbone returns;
  ``StepScheduled``: a module that follows the training step
* AO matrices -- ``AOLayout``, ``BlockExpansion`` (features → blocks), ``symmetrize``
* geometry -- ``radius_edges``, ``edge_vectors`` (model frame)
* equivariant ops -- everything of :mod:`deqh_core.ops`, one weight layout for every backend
* checking -- ``check_backbone`` (:mod:`~.testing`, the conformance kit), ``CheckResult``,
  ``BackboneCheckError``

A name here is public API: ``tests/test_plugins.py`` checks that docs/plugins.md covers every
name and hook, and that the built-in backbones and ``plugins/deqh-example`` import from deqh
through this module alone.
"""

from deqh_core.ao.basis import AOLayout
from deqh_core.ao.blocks import symmetrize
from deqh_core.ao.expansion import BlockExpansion
from deqh_core.ops import (
    BACKENDS,
    Channels,
    ChannelTensorProduct,
    EquivariantLayerNorm,
    EquivariantLinear,
    EquivariantOp,
    ExpansionHead,
    ExponentialBernstein,
    NormGate,
    OpsBackend,
    OpsError,
    ScalarGate,
    SphericalTensorProduct,
    head_irreps,
    interaction_irreps,
    natural_irreps,
    use_backend,
)
from deqh_core.ops.graph import edge_vectors, radius_edges
from deqh_core.plugins.hookspecs import hookimpl
from deqh_core.plugins.manager import backbones, get_backbone
from deqh_core.plugins.testing import BackboneCheckError, CheckResult, check_backbone
from deqh_core.solvers.backbone import BackboneError, BackboneSpec
from deqh_core.solvers.protocol import Blocks, Capabilities, HamiltonianSolver, StepScheduled

__all__ = [
    "BACKENDS",
    "AOLayout",
    "BackboneCheckError",
    "BackboneError",
    "BackboneSpec",
    "BlockExpansion",
    "Blocks",
    "Capabilities",
    "ChannelTensorProduct",
    "Channels",
    "CheckResult",
    "EquivariantLayerNorm",
    "EquivariantLinear",
    "EquivariantOp",
    "ExpansionHead",
    "ExponentialBernstein",
    "HamiltonianSolver",
    "NormGate",
    "OpsBackend",
    "OpsError",
    "ScalarGate",
    "SphericalTensorProduct",
    "StepScheduled",
    "backbones",
    "check_backbone",
    "edge_vectors",
    "get_backbone",
    "head_irreps",
    "hookimpl",
    "interaction_irreps",
    "natural_irreps",
    "radius_edges",
    "symmetrize",
    "use_backend",
]
