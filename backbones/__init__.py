"""Built-in backbones of deqh (installed as ``deqh_backbones``): the neural networks that map a
molecule (and optionally its current Hamiltonian and overlap) to Hamiltonian blocks."""
