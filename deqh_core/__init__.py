"""deqh: deep-equilibrium Hamiltonian solvers for DFT Hamiltonian matrices.

The core: AO layouts and conventions (:mod:`deqh_core.basis`, :mod:`deqh_core.convention`), the
block form (:mod:`deqh_core.blocks`) and Hamiltonian data (:mod:`deqh_core.data`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deqh")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
