"""AO matrices: how a Hamiltonian or overlap of a molecule is laid out, converted and read.

* :mod:`~.basis` -- ``AOLayout``: shells per element from PySCF, padded irreps-aligned blocks
* :mod:`~.convention` -- AO conventions (PySCF, ORCA, e3nn) as signed permutations; the model
  frame; Wigner-D
* :mod:`~.blocks` -- block form: vectorised split / assemble / symmetrise of batched matrices
* :mod:`~.expansion` -- features ↔ blocks through e3nn's tensor product (heads' last step)
* :mod:`~.reduction` -- diagonal reduction: on-site three-index overlaps with the auxiliary basis
* :mod:`~.orbitals` -- the one eigensolver ``H C = S C ε``, electron counts, densities

Nothing is re-exported: ``basis`` and ``orbitals`` stay importable without torch (spawned
PySCF workers use them).
"""

__all__ = ["basis", "blocks", "convention", "expansion", "orbitals", "reduction"]
