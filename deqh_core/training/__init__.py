"""Training: what a run is configured as, the model it builds, how it learns and is saved.

* :mod:`~.config` -- ``TrainConfig`` (data, model, deq, optim, run), presets, overrides
* :mod:`~.model` -- ``HamiltonianModel``: backbone + DEQ + prior as a config describes them
* :mod:`~.checkpoint` -- the checkpoint format: safe loading, RNG states, upgrades
* :mod:`~.metrics` -- losses and the QH9 metrics
* :mod:`~.trainer` -- ``Trainer`` and ``train``: the engine (EMA, exact resume, DDP)

Nothing is re-exported: loading a model for inference imports ``config``, ``model`` and
``checkpoint``, never the trainer.
"""

__all__ = ["checkpoint", "config", "metrics", "model", "trainer"]
