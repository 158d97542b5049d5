"""deqh: deep-equilibrium Hamiltonian solvers for DFT Hamiltonian matrices.

The floor plan, lowest floor first; a subpackage imports only from the floors below it
(``lint-imports`` checks it in CI, docs/architecture.md draws it):

* :mod:`deqh_core.util` -- errors, atomic files, cache folder, devices, process pool, progress
* :mod:`deqh_core.ao` -- AO matrices: basis layouts, conventions, block form, expansion,
  diagonal reduction, orbitals
* :mod:`deqh_core.ops` -- the layers backbones are built from (equivariant ops with backends,
  graphs)
* :mod:`deqh_core.data` -- Hamiltonian data: files, the label recipe, generation, splits, the
  PyG dataset, training domains
* :mod:`deqh_core.solvers` -- the ``HamiltonianSolver`` protocol, backbone specifications, the
  DEQ wrapper, fixed-point iteration, the prior Hamiltonian
* :mod:`deqh_core.plugins` -- the plugin author's one import: hook specs, the plugin manager,
  the conformance kit
* :mod:`deqh_core.training` -- configs and presets, the model a config builds, the trainer,
  checkpoints, losses and metrics
* :mod:`deqh_core.inference` -- using a trained model: loading, evaluation, prediction, SCF
  warm starts, analyses
* :mod:`deqh_core.experiments` -- studies built from training and inference (the ablation)
* :mod:`deqh_core.cli` -- the ``deqh`` command, thin over the floors below
"""

from importlib.metadata import PackageNotFoundError, version

from deqh_core import _moved

_moved.install()  # module paths of deqh 0.1 (deqh_core.basis, ...) import with a warning

try:
    __version__ = version("deqh")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
