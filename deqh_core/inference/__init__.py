"""Using a trained model: one home for loading it and for molecule → predicted ``H``.

* :mod:`~.loaded` -- ``load_model`` and ``LoadedModel``: checkpoint → model, molecule → item →
  batch → model → full ``H`` (the one path every use below takes); the run's data and splits
* :mod:`~.evaluate` -- ``deqh evaluate``: QH9 metrics on a split or another file
* :mod:`~.predict` -- ``deqh predict``: H, orbitals and domain checks for new molecules
* :mod:`~.scf` -- SCF warm starts from predictions (QH9's ratios); torch-free (SCF workers)
* :mod:`~.analyze` -- convergence and noise analyses (paper Figs. 4 and 6)

Nothing is re-exported: spawned SCF workers import :mod:`~.scf` without torch.
"""

__all__ = ["analyze", "evaluate", "loaded", "predict", "scf"]
