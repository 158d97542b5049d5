"""``deqh evaluate``: a trained checkpoint's metrics (paper A.8) on a split or another dataset.

Python API::

    from deqh_core.evaluate import evaluate_checkpoint, load_model

    result = evaluate_checkpoint("runs/cpu-small/best.pt", split="test")
    result.summary["h_mae_all"]           # Hartree; see deqh_core.metrics.SUMMARY_UNITS
    result.write_json("eval.json"); result.write_csv("per_molecule.csv")

    loaded = load_model("runs/cpu-small/best.pt")   # the model, rebuilt, in eval mode
    blocks, diagnostics = loaded.model(batch)

The model is rebuilt from the checkpoint's own config and ``describe`` (backbone, DEQ or not,
overlap, hyperparameters, basis, elements), with the EMA weights when the run used EMA and had
started averaging (exactly the weights its validation used). Heavy imports (torch, PySCF) happen
inside the functions so that ``deqh --help`` stays fast.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deqh_core.atomic import atomic_write
from deqh_core.errors import CheckpointError, DataError, DeqhError

if TYPE_CHECKING:
    import torch

    from deqh_core.basis import AOLayout
    from deqh_core.config import TrainConfig
    from deqh_core.data.dataset import HamiltonianDataset
    from deqh_core.metrics import MoleculeMetrics
    from deqh_core.model import HamiltonianModel
    from deqh_core.recipe import Recipe


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, on ``device`` in the run's dtype."""

    model: HamiltonianModel
    config: TrainConfig
    layout: AOLayout
    checkpoint: dict  # the raw checkpoint (``step``, ``split``, ``describe``, ...)
    path: Path
    weights: str  # "ema" or "model"
    device: torch.device
    dtype: torch.dtype

    @property
    def describe(self) -> dict:
        return self.checkpoint["describe"]

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("step", 0))

    def report_deq_failures(self) -> None:
        """Let a DEQ model report a molecule whose iterate was not finite (flagged in its
        diagnostics, the rest of the batch kept) instead of raising: for predictions, which
        flag such molecules. Evaluation keeps the error, which names the molecules."""
        from deqh_core.deq import DEQHamiltonianSolver

        if isinstance(self.model.net, DEQHamiltonianSolver):
            self.model.net.report_failures()

    @property
    def domain(self):
        """The :class:`~deqh_core.domain.TrainingDomain` recorded (None before format 2)."""
        from deqh_core.domain import TrainingDomain

        return TrainingDomain.from_dict(self.checkpoint.get("domain"))

    def recipe(self, overrides: list[str] | tuple = (), **changes) -> tuple[Recipe, str]:
        """The recipe of the labels the model learned, with ``overrides``
        (:func:`deqh_core.recipe.override_recipe`), and a line saying where it comes from.

        The checkpoint's record; for checkpoints before format 2, the recipe stored in the
        run's dataset file. Never a silent default: a checkpoint without either is an error
        unless ``overrides`` are given.
        """
        from deqh_core.domain import recorded_recipe
        from deqh_core.prior import check_prior_recipe
        from deqh_core.recipe import Recipe, labels_recipe, override_recipe

        recorded = recorded_recipe(self.checkpoint.get("data"))
        if recorded is not None:
            base, note = recorded
            source = "the checkpoint" + (f" ({note})" if note else "")
        else:
            path = run_data_path(self, must_exist=False)
            if path is not None and path.is_file():
                from deqh_core.data.md17 import open_source

                meta = open_source(path, basis=self.layout.basis).recipe
                base, note = labels_recipe(meta, self.layout.basis)
                source = f"{path}, the run's dataset (the checkpoint records none)"
                source += f"; {note}" if note else ""
            elif overrides or any(v is not None for v in changes.values()):
                base = Recipe(basis=self.layout.basis)
                source = "the defaults (the checkpoint records none)"
            else:
                raise CheckpointError(
                    f"{self.path}: records no labels' recipe (written before format 2) and the "
                    f"run's dataset {self.config.data.path} is not here; give the recipe with "
                    "--recipe xc=... (and grid_level=..., charge=...)"
                )
        recipe = override_recipe(base, overrides, **changes)
        if recipe.basis.lower() != self.layout.basis.lower():
            raise DataError(
                f"recipe basis {recipe.basis!r}: the model predicts in {self.layout.basis!r}"
            )
        check_prior_recipe(self.config.model.prior, base, recipe, "the recipe overrides")
        if recipe != base:
            changed = {k: v for k, v in recipe.model_dump().items() if base.model_dump()[k] != v}
            source += "; overridden: " + ", ".join(f"{k}={v}" for k, v in changed.items())
        return recipe, source


def load_model(
    checkpoint: str | Path,
    device: str = "cpu",
    ema: bool | None = None,
    model: HamiltonianModel | None = None,
    ops: str | None = "auto",
) -> LoadedModel:
    """Rebuild the model of a ``deqh train`` checkpoint (``last.pt`` / ``best.pt``).

    Args:
        checkpoint: the checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        ops: the equivariant-ops backend (:mod:`deqh_core.ops`) of a backbone that has one,
            whatever the run trained with (they compute the same model): ``auto`` (the
            fastest here), ``fused``, ``e3nn``, ``cueq``; None keeps the run's.
        ema: use the EMA weights (``None``: when the run used EMA and averaging had started,
            as its validation did; ``True`` with a run without EMA is an error).
        model: an already built model of the checkpoint's ``describe`` (e.g. the trainer's
            own, after training) to load the weights into instead of building one; it is
            modified in place.

    Raises:
        CheckpointError: missing, corrupt or not loadable into the model its config describes
            (e.g. the backbone's plugin changed its hyperparameters).
        BackboneError: the checkpoint's backbone is not installed.
    """
    import torch

    from deqh_core.basis import AOLayout
    from deqh_core.checkpoint import load_checkpoint, recorded_model, same_model
    from deqh_core.config import ConfigError, load_config
    from deqh_core.device import resolve_device
    from deqh_core.model import HamiltonianModel

    path = Path(checkpoint)
    state = load_checkpoint(path)
    try:
        config = load_config(None, None, state["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: the checkpoint's config does not validate: {err}") from None
    if ops is not None:
        from deqh_core.plugins import get_backbone

        if "ops" in get_backbone(config.model.backbone).config.model_fields:
            params = {**config.model.params, "ops": ops}
            model_config = config.model.model_copy(update={"params": params})
            config = config.model_copy(update={"model": model_config})
    describe = recorded_model(state)
    try:
        layout = AOLayout(describe["basis"], describe["elements"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: the checkpoint describes no AO layout ({err})") from None
    target = resolve_device(device)
    dtype = getattr(torch, config.run.dtype)
    if model is None:
        try:
            model = HamiltonianModel(config.model, layout, config.deq)
        except DeqhError as err:
            raise type(err)(f"{path}: {err}") from None
    if not same_model(model.describe(), describe):
        raise CheckpointError(
            f"{path}: checkpoint is for {describe}, but its config builds {model.describe()} "
            "(was the backbone's plugin changed?)"
        )
    started = state.get("ema") is not None and state.get("step", 0) > config.optim.ema_start_step
    if ema and state.get("ema") is None:
        raise CheckpointError(f"{path}: the run did not use EMA (optim.ema=false)")
    use_ema = started if ema is None else bool(ema) and state.get("ema") is not None
    weights = state["model"]
    if use_ema:
        prefix = "module."
        weights = {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    model.to(target, dtype)  # before loading: float64 weights must not pass through float32
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not fit the model {describe['backbone']!r} "
            f"({first[0] if first else err})"
        ) from None
    model.eval()
    return LoadedModel(
        model, config, layout, state, path, "ema" if use_ema else "model", target, dtype
    )


# ----------------------------------------------------------------------------------------------
# data


def run_data_path(loaded: LoadedModel, must_exist: bool = True) -> Path | None:
    """The run's dataset file: as configured (relative to the working directory), else where
    the checkpoint recorded it; the bundled file for runs on it. Checked against the recorded
    checksum when found.

    Raises:
        DataError: ``must_exist`` and the file is in neither place, or it is another dataset.
    """
    from deqh_core.data.dataset import BUNDLED

    identity = loaded.checkpoint.get("data") or {}
    if not loaded.config.data.path:
        candidates = [BUNDLED]
    else:
        candidates = [Path(loaded.config.data.path)]
        if identity.get("path"):
            candidates.append(Path(identity["path"]))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        if must_exist:
            where = " nor at ".join(str(p) for p in dict.fromkeys(candidates))
            raise DataError(f"the checkpoint's training data is not at {where}; pass --data PATH")
        return None
    if identity.get("checksum"):
        from deqh_core.data.md17 import open_source
        from deqh_core.domain import dataset_checksum

        reader = open_source(path, basis=loaded.layout.basis)
        if dataset_checksum(reader.ids(), reader.recipe) != identity["checksum"]:
            raise DataError(
                f"{path} is not the dataset {loaded.path} was trained on (its ids or recipe "
                "differ from the checkpoint's record); pass --data PATH"
            )
    return path


def _split_ids(loaded: LoadedModel, split: str) -> list[int]:
    recorded = loaded.checkpoint.get("split")
    if not isinstance(recorded, dict):
        raise DataError(f"{loaded.path}: the checkpoint records no split; pass --data PATH")
    if split == "all":
        return [i for name in ("train", "val", "test") for i in recorded.get(name, [])]
    ids = list(recorded.get(split, []))
    if not ids:
        sizes = {k: len(v) for k, v in recorded.items()}
        raise DataError(
            f"{loaded.path}: the run's {split} split is empty (split sizes {sizes}); "
            "choose another --split"
        )
    return ids


def evaluation_dataset(
    loaded: LoadedModel, data: str | Path | None = None, split: str | None = None
) -> tuple[HamiltonianDataset, str]:
    """The molecules to evaluate and a label saying which.

    Without ``data``: the checkpoint's own dataset, its recorded ``split`` (default ``test``).
    With ``data``: every molecule of that file, or the recorded ``split``'s ids in it; the
    file's basis and elements must fit the checkpoint's AO layout.
    """
    from deqh_core.data.dataset import HamiltonianDataset

    layout = loaded.layout
    if data is None:
        path = run_data_path(loaded)
        split = split or "test"
        ids = _split_ids(loaded, split)
        return HamiltonianDataset(path, layout=layout, ids=ids), f"{path} (split: {split})"
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: no such dataset file")
    try:
        probe = HamiltonianDataset(path, basis=layout.basis)
    except DataError as err:
        raise DataError(
            f"{err} (checkpoint {loaded.path} was trained on {layout.basis} labels)"
        ) from None
    from deqh_core.basis import symbol

    extra = sorted(set(probe.layout.elements) - set(layout.elements))
    if extra:
        raise DataError(
            f"{path}: element(s) {', '.join(symbol(z) for z in extra)} are not in the "
            f"checkpoint's AO layout ({layout.basis}: "
            f"{' '.join(symbol(z) for z in layout.elements)}); {loaded.path} cannot predict them"
        )
    if split is None or split == "all":
        return HamiltonianDataset(path, layout=layout), f"{path} (all molecules)"
    ids = _split_ids(loaded, split)
    missing = sorted(set(ids) - set(probe.ids))
    if missing:
        raise DataError(
            f"{path}: lacks {len(missing)} molecule id(s) of the checkpoint's {split} split "
            f"(e.g. {missing[:5]}); is it the run's dataset?"
        )
    return HamiltonianDataset(path, layout=layout, ids=ids), f"{path} (split: {split})"


def initial_guess_transform(
    loaded: LoadedModel, recipe: Recipe, dataset=None, progress: bool = False
):
    """The dataset transform that puts ``H0`` on the items of a model with a prior or a DEQ
    started from a PySCF guess (built with ``recipe``, the labels' recipe of the model), else
    ``None``. With a ``dataset`` from a file, ``H0`` of its molecules is first computed into
    (or found in) the file's prior cache."""

    from deqh_core.prior import InitialGuess, PriorCache

    transform = InitialGuess.for_run(loaded.config, loaded.layout.basis, recipe.model_dump())
    if transform is not None and getattr(dataset, "path", None) is not None:
        transform.cache = PriorCache(dataset.path, transform.recipe, transform.kind)
        workers = loaded.config.data.prior_workers or os.cpu_count() or 1
        transform.cache.fill(dataset.structures(), workers, progress)
    return transform


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
    """Summary (averages over molecules, units in ``deqh_core.metrics.SUMMARY_UNITS``) and
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
        from deqh_core.metrics import SUMMARY_UNITS

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
        import io

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
):
    """Run ``loaded.model`` over ``dataset`` and accumulate the metrics; ``recipe`` (default:
    :meth:`LoadedModel.recipe`) sets the charge and starts a guess-started DEQ.

    Returns a :class:`~deqh_core.metrics.MetricsAccumulator`.
    """
    import torch
    from torch_geometric.loader import DataLoader

    from deqh_core.device import to_device
    from deqh_core.metrics import MetricsAccumulator
    from deqh_core.progress import tracked

    size = batch_size or loaded.config.data.val_batch_size or loaded.config.data.batch_size
    recipe = recipe or loaded.recipe()[0]
    transform = initial_guess_transform(loaded, recipe, dataset, progress)
    loader = DataLoader(_Transformed(dataset, transform), batch_size=size)
    acc = MetricsAccumulator(loaded.layout.basis, recipe.charge)
    with torch.no_grad(), tracked("evaluate", len(loader), progress) as advance:
        for batch in loader:
            batch = to_device(batch, loaded.device, loaded.dtype)
            pred, diagnostics = loaded.model(batch)
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
    from deqh_core.prior import check_prior_recipe
    from deqh_core.recipe import labels_recipe

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
