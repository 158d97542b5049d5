"""Studies built from training and inference.

* :mod:`~.ablate` -- the paper's ablation (Fig. 5): four variants of a backbone, trained on one
  split with one budget and scored alike
"""

__all__ = ["ablate"]
