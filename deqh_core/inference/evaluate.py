"""``deqh evaluate``: a trained checkpoint's metrics (paper A.8) on a split or another dataset.

Python API::

    from deqh_core.inference.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint("runs/cpu-small/best.pt", split="test")
    result.summary["h_mae_all"]           # Hartree; see deqh_core.training.metrics.SUMMARY_UNITS
    result.write_json("eval.json"); result.write_csv("per_molecule.csv")

What is scored and with which weights: :func:`~deqh_core.inference.loaded.evaluation_dataset`
and :func:`~deqh_core.inference.loaded.load_model`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch_geometric.loader import DataLoader

from deqh_core.data.recipe import Recipe, labels_recipe
from deqh_core.inference.loaded import LoadedModel, evaluation_dataset, load_model
from deqh_core.solvers.prior import check_prior_recipe
from deqh_core.training.metrics import SUMMARY_UNITS, MetricsAccumulator, MoleculeMetrics
from deqh_core.training.model import HamiltonianModel
from deqh_core.util.files import atomic_write
from deqh_core.util.progress import tracked


class _Transformed:
    """A dataset whose items pass through ``transform`` (a PyG-style per-item function)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return self.transform(item) if self.transform is not None else item


# ----------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvaluationResult:
    """Summary (averages over molecules, units in ``deqh_core.training.metrics.SUMMARY_UNITS``) and
    per-molecule metrics of one evaluation."""

    summary: dict[str, float]
    molecules: list[MoleculeMetrics]
    checkpoint: str
    data: str
    weights: str
    step: int
    model: dict
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "step": self.step,
            "weights": self.weights,
            "model": self.model,
            "data": self.data,
            "metrics": self.summary,
            "units": SUMMARY_UNITS,
            **self.extra,
        }

    def write_json(self, path: str | Path) -> Path:
        """The summary and provenance as JSON (atomically)."""
        return atomic_write(Path(path), json.dumps(_finite(self.as_dict()), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> Path:
        """One row per molecule (Hartree; ``psi_cos`` a fraction), atomically."""
        rows = [asdict(m) for m in self.molecules]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, list(rows[0]) if rows else ["mol_id"])
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write(Path(path), buffer.getvalue())


def _finite(value):
    """JSON has no NaN: write ``null`` instead."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate_model(
    loaded: LoadedModel,
    dataset,
    batch_size: int | None = None,
    recipe: Recipe | None = None,
    progress: bool = False,
) -> MetricsAccumulator:
    """Run ``loaded``'s model over ``dataset`` (labelled items) and accumulate the metrics;
    ``recipe`` (default: :meth:`LoadedModel.recipe`) sets the charge and starts a
    guess-started DEQ."""
    size = batch_size or loaded.config.data.val_batch_size or loaded.config.data.batch_size
    recipe = recipe or loaded.recipe()[0]
    transform = loaded.start(recipe, dataset, progress)
    loader = DataLoader(_Transformed(dataset, transform), batch_size=size)
    acc = MetricsAccumulator(loaded.layout.basis, recipe.charge)
    with tracked("evaluate", len(loader), progress) as advance:
        for batch in loader:
            batch = loaded.batch(batch)
            pred, diagnostics = loaded(batch)
            acc.update(pred, batch, diagnostics)
            advance()
    return acc


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    ema: bool | None = None,
    progress: bool = False,
    model: HamiltonianModel | None = None,
) -> EvaluationResult:
    """Metrics of a checkpoint on its recorded split (default ``test``) or on ``data``.

    See :func:`evaluation_dataset` for what is evaluated and :func:`load_model` for the
    weights (and ``model``). Raises a ``DeqhError`` subclass with a one-line message on bad
    input.
    """

    loaded = load_model(checkpoint, device, ema, model)
    dataset, label = evaluation_dataset(loaded, data, split)
    recipe = labels_recipe(dataset.recipe, loaded.layout.basis)[0]  # the labels scored against
    if loaded.config.model.prior != "none":
        check_prior_recipe(loaded.config.model.prior, loaded.recipe()[0], recipe, str(dataset.path))
    acc = evaluate_model(loaded, dataset, batch_size, recipe, progress)
    return EvaluationResult(
        summary=acc.summary(),
        molecules=acc.molecules,
        checkpoint=str(loaded.path),
        data=label,
        weights=loaded.weights,
        step=loaded.step,
        model=loaded.describe,
    )
