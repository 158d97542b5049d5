"""QHNet (Yu et al., ICML 2023) and its DEQHNet filter (Wang et al., NeurIPS 2024) as a deqh
backbone: ``--backbone qhnet`` is the predictor, ``--overlap`` adds the overlap's features and
``--deq`` the Hamiltonian's, run to their fixed point.

Modules: :mod:`~.config` (hyperparameters), :mod:`~.conv` (ConvNetLayer, the structure
stream), :mod:`~.interaction` (node-wise and pair-wise layers), :mod:`~.attention`
(TransBlock), :mod:`~.filter` (the DEQHNet filter), :mod:`~.model` (the backbone). The
equivariant ops (tensor products, linear layers, gates, layer norm, the exponential-Bernstein
radial basis, the tensor-expansion heads) come from :mod:`deqh_core.ops`, computed by
the backend that the config's ``ops`` field picks (fused, e3nn or cuEquivariance; same weights).

Where this differs from the public QHNet / DEQHNet code, and why:

* O(3), not SO(3): the reference labels every interaction feature "even" whatever its parity;
  here the interaction irreps carry the parity-flipped types a block needs (``1e`` in a p-p
  block, ``2o`` in p-d, ...), so mirror images get mirrored Hamiltonians.
* Any basis set and element: block irreps, heads and padding come from the AO layout; an
  ``l_max`` too small for the basis is an error that says which ``l_max`` is needed.
* DEQHNet's H and S features form one interleaved stream through one TransBlock per layer
  (the reference runs separate H and S stacks whose blocks output all 128 x l <= 4 channels).
* Per DEQ iteration only the filter runs: the structure stream *and its own* self/pair
  interaction features are computed once per batch; the filter fuses its features with the
  structure features and runs narrower self/pair layers (``filter_channels``) whose output is
  added at the heads' bottleneck. The reference re-runs full-width self/pair layers on the
  fused features every iteration.
* The heads' per-element weights, the radial MLPs and the harmonics' Clebsch-Gordan
  contractions depend on the geometry only and are computed once per batch.
"""

from deqh_backbones.qhnet.config import QHNetConfig
from deqh_backbones.qhnet.model import QHNet, QHNetInjection

__all__ = ["QHNet", "QHNetConfig", "QHNetInjection"]
