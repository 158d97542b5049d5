"""Equivariant ops with interchangeable backends, for any backbone.

One module per op family, each op an :class:`~deqh_core.ops.backends.EquivariantOp` whose
parameters have one layout for every backend (a checkpoint trained with one backend loads in
another and gives the same outputs to float tolerance):

* :mod:`~.tensor_product` -- :class:`SphericalTensorProduct` (features ⊗ harmonics, ``uvu``),
  :class:`ChannelTensorProduct` (``uuu``);
* :mod:`~.linear` -- :class:`EquivariantLinear`;
* :mod:`~.gate` -- :class:`ScalarGate` (e3nn's ``Gate``), :class:`NormGate` (QHNet's);
* :mod:`~.norm` -- :class:`EquivariantLayerNorm`;
* :mod:`~.radial` -- :class:`ExponentialBernstein` (radial basis with a smooth cutoff);
* :mod:`~.heads` -- :class:`ExpansionHead` (features -> AO blocks, element-conditioned),
  :func:`natural_irreps`, :func:`interaction_irreps` and :func:`head_irreps` (the irreps of
  hidden features, of their products and of the heads' inputs);
* :mod:`~.channels` -- index tables for per-channel operations (no backends);
* :mod:`~.backends` -- the backends (``fused``, ``e3nn``, ``cueq``, ``auto``), how ``auto``
  resolves, and :func:`use_backend` to switch a whole model.

Every op takes ``backend=`` (default ``auto``); a backbone usually exposes it as an ``ops``
config field and calls ``use_backend(self, config.ops)`` once at the end of its constructor.
"""

from deqh_core.ops.backends import (
    BACKENDS,
    EquivariantOp,
    OpsBackend,
    OpsError,
    active_backends,
    cueq_available,
    cueq_kernels,
    resolve,
    use_backend,
)
from deqh_core.ops.channels import Channels
from deqh_core.ops.gate import NormGate, ScalarGate
from deqh_core.ops.heads import ExpansionHead, head_irreps, interaction_irreps, natural_irreps
from deqh_core.ops.linear import EquivariantLinear
from deqh_core.ops.norm import EquivariantLayerNorm
from deqh_core.ops.radial import ExponentialBernstein
from deqh_core.ops.tensor_product import ChannelTensorProduct, SphericalTensorProduct

__all__ = [
    "BACKENDS",
    "ChannelTensorProduct",
    "Channels",
    "EquivariantLayerNorm",
    "EquivariantLinear",
    "EquivariantOp",
    "ExpansionHead",
    "ExponentialBernstein",
    "NormGate",
    "OpsBackend",
    "OpsError",
    "ScalarGate",
    "SphericalTensorProduct",
    "active_backends",
    "cueq_available",
    "cueq_kernels",
    "head_irreps",
    "interaction_irreps",
    "natural_irreps",
    "resolve",
    "use_backend",
]
