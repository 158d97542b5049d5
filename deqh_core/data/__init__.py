"""Hamiltonian data: files, the recipe of their labels, how they are made, split and served.

* :mod:`~.store` -- QH9 SQLite files (stable and dynamic), read and written as QH9 does
* :mod:`~.md17` -- SchNOrb MD17 ASE databases (ORCA order); ``open_source`` for any file
* :mod:`~.xyz` -- xyz files
* :mod:`~.qm9` -- QM9 geometries from qm9pack, the source of QH9-stable
* :mod:`~.recipe` -- the DFT recipe of labels and how PySCF runs it
* :mod:`~.generate` -- the resumable, parallel PySCF label generator
* :mod:`~.splits` -- QH9 splits and random splits
* :mod:`~.dataset` -- the PyG dataset serving blocks and overlaps; items of new molecules
* :mod:`~.domain` -- a dataset's identity and the training domain of a model
* :mod:`~.check` -- ``deqh data check``

Nothing is re-exported: the generator's spawned workers import it without torch.
"""

__all__ = [
    "check",
    "dataset",
    "domain",
    "generate",
    "md17",
    "qm9",
    "recipe",
    "splits",
    "store",
    "xyz",
]
