"""Hamiltonian data: readers, the native QH9-schema store, the PySCF generator, splits and the
PyG dataset."""
