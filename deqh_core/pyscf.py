"""deqh inside PySCF: start a Kohn-Sham SCF from a trained model's Hamiltonian.

::

    from pyscf import dft, gto
    from deqh_core.pyscf import accelerate, init_guess

    mol = gto.M(atom="water.xyz", basis="def2-svp")
    mf = dft.RKS(mol, xc="b3lyp5")
    mf.kernel(dm0=init_guess(mf))            # the shipped qh9-small model's density
    # or: accelerate(mf).kernel()            # every later mf.kernel() starts from the model

``model`` is a shipped model's name (``deqh models``) or a checkpoint of ``deqh train``. A
model with a prior first builds ``H0``: by default fast (density-fitted, coarse grid: about
half an SCF cycle), or ``h0="exact"`` as in training, with the given mean-field object's own
grid and integrals, which the SCF then reuses; both start the SCF equally well
(docs/pretrained.md). The molecule's basis and charge come from PySCF; what the model cannot
do (an open shell, another basis, an element it never saw) is refused with a
:class:`~deqh_core.util.errors.DataError`, and a molecule unlike its training data warns
(:class:`OutOfDomainWarning`), as ``deqh predict`` does. The model predicts its labels'
functional (``b3lyp5`` for ``qh9-small``); for another functional its density is still a
valid guess, built with its own recipe's ``H0``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from deqh_core.inference.guess import GuessInfo, ModelGuess, OutOfDomainWarning, UnconvergedWarning
from deqh_core.inference.loaded import load_model
from deqh_core.inference.pretrained import resolve_checkpoint

__all__ = [
    "GuessInfo",
    "OutOfDomainWarning",
    "UnconvergedWarning",
    "accelerate",
    "init_guess",
    "model_guess",
]

DEFAULT_MODEL = "qh9-small"


def model_guess(
    model: str | Path = DEFAULT_MODEL, device: str = "cpu", h0: str = "fast"
) -> ModelGuess:
    """The model as a :class:`~deqh_core.inference.guess.ModelGuess`, loaded once per process
    (and again if its file changes); ``h0``: how a prior's ``H0`` is built (``fast`` or
    ``exact``, :data:`~deqh_core.inference.guess.H0_MODES`)."""
    path = resolve_checkpoint(model).resolve()
    return _loaded(str(path), path.stat().st_mtime_ns, device, h0)


@functools.lru_cache(maxsize=4)
def _loaded(path: str, mtime_ns: int, device: str, h0: str) -> ModelGuess:
    return ModelGuess(load_model(path, device=device), h0=h0)


def init_guess(
    mol_or_mf, model: str | Path = DEFAULT_MODEL, device: str = "cpu", h0: str = "fast"
) -> np.ndarray:
    """A closed-shell density matrix ``[n_ao, n_ao]`` for ``mf.kernel(dm0=...)`` from the
    model's Hamiltonian of the molecule.

    Args:
        mol_or_mf: a ``pyscf.gto.Mole``, or the restricted Kohn-Sham object that will run the
            SCF (then its grid and integrals serve the model's ``H0`` and are kept for the SCF).
        model: a shipped model's name or a checkpoint path.
        device: where the model runs (``cpu``, ``cuda``, ``auto``).
        h0: how a prior model's ``H0`` is built: ``fast`` (density fitting, coarse grid) or
            ``exact`` (as in training; with ``mf``'s own grid and integrals).
    """
    guess = model_guess(model, device, h0)
    if hasattr(mol_or_mf, "mol"):
        mf = mol_or_mf
    else:
        guess.check(mol_or_mf)  # refuse before building anything
        mf = guess.recipe.rks(mol_or_mf)
    return guess.density(mf)[0]


def accelerate(mf, model: str | Path = DEFAULT_MODEL, device: str = "cpu", h0: str = "fast"):
    """Set ``mf`` to start every SCF from the model, through PySCF's own hook: its
    ``get_init_guess``, which ``mf.kernel()`` calls when given no ``dm0``. Returns ``mf``.

    The molecule is checked now (an unsupported one raises here, not at ``kernel``). After
    each guess, ``mf.deqh_guess`` holds its :class:`GuessInfo` (seconds of ``H0`` and model,
    DEQ residual, domain warnings).
    """
    guess = model_guess(model, device, h0)
    guess.check(mf.mol)

    def get_init_guess(mol=None, key=None, **kwargs):
        dm, mf.deqh_guess = guess.density(mf)
        return dm

    mf.get_init_guess = get_init_guess
    mf.init_guess = f"deqh:{Path(str(model)).name}"  # what mf.dump_flags() reports
    return mf
