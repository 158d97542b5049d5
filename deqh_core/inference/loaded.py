"""A trained model, loaded: the one home of checkpoint → model and molecule → predicted ``H``.

Every use of a trained model goes through here (``deqh evaluate``, ``predict``, ``scf``,
``analyze``)::

    from deqh_core.inference import load_model

    loaded = load_model("runs/cpu-small/best.pt")       # the model, rebuilt, in eval mode
    item = loaded.item(atomic_numbers, positions)       # a PyG item (S from PySCF, H0 if needed)
    h, seconds, diagnostics = loaded.predict(item)      # H [n_ao, n_ao], PySCF order, Hartree

    batch = loaded.batch(items)                         # many molecules at once
    blocks, diagnostics = loaded(batch)                 # block form
    hamiltonians = loaded.matrices(blocks, batch)       # one [n_ao, n_ao] array per molecule

The model is rebuilt from the checkpoint's own config and ``describe`` (backbone, DEQ or not,
overlap, hyperparameters, basis, elements), with the EMA weights when the run used EMA and had
started averaging (exactly the weights its validation used).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from deqh_core.ao.basis import AOLayout, symbol
from deqh_core.ao.blocks import assemble, unflatten
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset, molecule_data, structure_item
from deqh_core.data.domain import (
    TrainingDomain,
    dataset_checksum,
    geometry_checksum,
    recorded_recipe,
)
from deqh_core.data.md17 import open_source
from deqh_core.data.recipe import Recipe, labels_recipe, override_recipe
from deqh_core.data.store import MoleculeRecord
from deqh_core.inference.pretrained import resolve_checkpoint
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.deq import DEQDiagnostics, DEQHamiltonianSolver
from deqh_core.solvers.prior import InitialGuess, PriorCache, check_prior_recipe, start_kind
from deqh_core.solvers.protocol import Blocks
from deqh_core.training.checkpoint import (
    evaluation_weights,
    load_checkpoint,
    model_difference,
    recorded_model,
    same_model,
)
from deqh_core.training.config import TrainConfig, load_config, upgrade_config
from deqh_core.training.model import HamiltonianModel
from deqh_core.util.device import resolve_device, to_device
from deqh_core.util.errors import CheckpointError, ConfigError, DataError, DeqhError
from deqh_core.util.files import not_found


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
    prior_seconds: float = 0.0  # PySCF's time to build the last :meth:`item`'s H0, s

    # ------------------------------------------------------------------------------------------
    # what the checkpoint records

    @property
    def describe(self) -> dict:
        return self.checkpoint["describe"]

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("step", 0))

    @property
    def name(self) -> str:
        """A label such as ``"qhnet (DEQ)"``."""
        return f"{self.describe['backbone']}{' (DEQ)' if self.describe['deq'] else ''}"

    @property
    def h0_kind(self) -> str | None:
        """The PySCF ``H0`` the model starts from (its prior, or a DEQ's ``deq.init`` guess):
        ``"minao"``, ``"1e"`` or None."""
        return start_kind(self.config.model, self.config.deq)

    @property
    def domain(self) -> TrainingDomain | None:
        """What the model was trained on (None for checkpoints before format 2)."""
        return TrainingDomain.from_dict(self.checkpoint.get("domain"))

    def recipe(self, overrides: Sequence[str] = (), **changes) -> tuple[Recipe, str]:
        """The recipe of the labels the model learned, with ``overrides``
        (:func:`~deqh_core.data.recipe.override_recipe`), and a line saying where it comes from.

        The checkpoint's record; for checkpoints before format 2, the recipe stored in the
        run's dataset file. Never a silent default: a checkpoint without either is an error
        unless ``overrides`` are given.
        """
        recorded = recorded_recipe(self.checkpoint.get("data"))
        if recorded is not None:
            base, note = recorded
            source = "the checkpoint" + (f" ({note})" if note else "")
        else:
            path = run_data_path(self, must_exist=False)
            if path is not None and path.is_file():
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

    def dataset_recipe(self, data_path: str | Path | None = None) -> Recipe:
        """The labels' recipe (:meth:`recipe`); for a checkpoint that records none, the recipe
        stored in ``data_path``."""
        try:
            return self.recipe()[0]
        except CheckpointError:
            if data_path is None or not Path(data_path).is_file():
                raise
            meta = open_source(Path(data_path), basis=self.layout.basis).recipe
            return labels_recipe(meta, self.layout.basis)[0]

    # ------------------------------------------------------------------------------------------
    # molecules in, Hamiltonians out

    def start(self, recipe: Recipe, dataset=None, progress: bool = False) -> InitialGuess | None:
        """The dataset transform that puts ``H0`` on the items of a model with a prior or a DEQ
        started from a PySCF guess (built with ``recipe``, the labels' recipe of the model), else
        ``None``. With a ``dataset`` from a file, ``H0`` of its molecules is first computed into
        (or found in) the file's prior cache."""
        transform = InitialGuess.for_run(self.config, self.layout.basis, recipe.model_dump())
        if transform is not None and getattr(dataset, "path", None) is not None:
            transform.cache = PriorCache(dataset.path, transform.recipe, transform.kind)
            workers = self.config.data.prior_workers or os.cpu_count() or 1
            transform.cache.fill(dataset.structures(), workers, progress)
        return transform

    def item(
        self,
        atomic_numbers: np.ndarray,
        positions: np.ndarray,
        recipe: Recipe | None = None,
        label: np.ndarray | None = None,
        h0: np.ndarray | None = None,
    ) -> Data:
        """The PyG item of one molecule (positions ``[n_atoms, 3]`` in Å; ``label``: its H,
        ``[n_ao, n_ao]`` PySCF order, or None), with ``H0`` when the model starts from one,
        built with ``recipe`` (default: the labels' recipe, :meth:`recipe`); the time that
        took is :attr:`prior_seconds`. ``h0``: that ``H0`` (``[n_ao, n_ao]``, PySCF order,
        Hartree), already computed by the caller (e.g. with the SCF's own mean-field object).

        Raises:
            SingularOverlapError: ``S`` is (nearly) singular; names the closest atoms.
        """
        z = np.asarray(atomic_numbers, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.float64)
        if label is None:
            data = structure_item(z, pos, self.layout)
        else:
            data = molecule_data(MoleculeRecord(0, z, pos, label), self.layout)
        self.prior_seconds = 0.0
        if self.h0_kind is None:
            return data
        transform = self.start(recipe or self.recipe()[0])
        t0 = time.perf_counter()
        data = transform(data) if h0 is None else transform.attach(data, h0)
        self.prior_seconds = time.perf_counter() - t0
        return data

    def batch(self, items: Sequence[Data] | Batch) -> Batch:
        """Items (or an already collated batch) as one batch on the model's device and dtype."""
        if not isinstance(items, Batch):
            items = Batch.from_data_list(list(items))
        return to_device(items, self.device, self.dtype)

    def __call__(self, batch: Batch) -> tuple[Blocks, DEQDiagnostics | None]:
        """The model on a batch (:meth:`batch`), without gradients: H in block form and, for a
        DEQ, its per-molecule diagnostics."""
        with torch.no_grad():
            return self.model(batch)

    @staticmethod
    def matrices(blocks: Blocks, batch: Batch) -> list[np.ndarray]:
        """Block form → one full symmetric matrix per molecule, ``[n_ao, n_ao]`` float64 in the
        data's AO order (PySCF's): predictions with ``blocks`` from :meth:`__call__`, overlaps
        with ``Blocks(batch.s_diag, batch.s_off)``."""
        flat = assemble(blocks.diag.double(), blocks.off.double(), batch)
        return [(m + m.T) / 2 for m in (h.cpu().numpy() for h in unflatten(flat, batch.n_ao))]

    def predict(self, item: Data) -> tuple[np.ndarray, float, DEQDiagnostics | None]:
        """One molecule: ``(H [n_ao, n_ao] float64 PySCF order, seconds, DEQDiagnostics |
        None)``; the clock covers the model alone and stops when a GPU has finished."""
        batch = self.batch([item])
        t0 = time.perf_counter()
        blocks, diagnostics = self(batch)
        if blocks.diag.is_cuda:
            torch.cuda.synchronize(blocks.diag.device)
        seconds = time.perf_counter() - t0
        return self.matrices(blocks, batch)[0], seconds, diagnostics

    def report_deq_failures(self) -> None:
        """Let a DEQ model report a molecule whose iterate was not finite (flagged in its
        diagnostics, the rest of the batch kept) instead of raising: for predictions, which
        flag such molecules. Evaluation keeps the error, which names the molecules."""
        if isinstance(self.model.net, DEQHamiltonianSolver):
            self.model.net.report_failures()


def load_model(
    checkpoint: str | Path,
    device: str = "cpu",
    ema: bool | None = None,
    model: HamiltonianModel | None = None,
    ops: str | None = "auto",
) -> LoadedModel:
    """Rebuild the model of a ``deqh train`` checkpoint (``last.pt`` / ``best.pt``).

    Args:
        checkpoint: the checkpoint file, or a shipped model's name
            (:mod:`deqh_core.inference.pretrained`).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        ema: use the EMA weights (``None``: when the run used EMA and averaging had started,
            as its validation did; ``True`` with a run without EMA is an error).
        model: an already built model of the checkpoint's ``describe`` (e.g. the trainer's
            own, after training) to load the weights into instead of building one; it is
            modified in place.
        ops: the equivariant-ops backend (:mod:`deqh_core.ops`) of a backbone that has one,
            whatever the run trained with (they compute the same model): ``auto`` (the
            fastest here), ``fused``, ``e3nn``, ``cueq``; None keeps the run's.

    Raises:
        CheckpointError: missing, corrupt or not loadable into the model its config describes
            (e.g. the backbone's plugin changed its hyperparameters).
        BackboneError: the checkpoint's backbone is not installed.
    """
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    try:
        config = load_config(None, None, upgrade_config(state["config"]))
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: the checkpoint's config does not validate: {err}") from None
    if ops is not None and "ops" in get_backbone(config.model.backbone).config.model_fields:
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
            f"{path}: its config builds another model than the one it holds (checkpoint -> "
            f"built: {model_difference(describe, model.describe())}; was the backbone's plugin "
            "changed?)"
        )
    try:
        weights, which = evaluation_weights(state, config.optim.ema_start_step, ema)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    model.to(target, dtype)  # before loading: float64 weights must not pass through float32
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        # torch's first line is a heading; the lines after it name the keys and shapes
        lines = [line.strip() for line in str(err).strip().splitlines()[1:] if line.strip()]
        detail = "; ".join(lines)[:300] or str(err).strip()
        raise CheckpointError(
            f"{path}: weights do not fit the model {describe['backbone']!r} ({detail})"
        ) from None
    model.eval()
    return LoadedModel(model, config, layout, state, path, which, target, dtype)


# ----------------------------------------------------------------------------------------------
# the run's data


def run_data_path(loaded: LoadedModel, must_exist: bool = True) -> Path | None:
    """The run's dataset file: as configured (relative to the working directory), else where
    the checkpoint recorded it; the bundled file for runs on it. Checked against the recorded
    checksum when found.

    Raises:
        DataError: ``must_exist`` and the file is in neither place, or it is another dataset.
    """
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
        reader = open_source(path, basis=loaded.layout.basis)
        if dataset_checksum(reader.ids(), reader.recipe) != identity["checksum"]:
            raise DataError(
                f"{path} is not the dataset {loaded.path} was trained on (its ids or recipe "
                "differ from the checkpoint's record); pass --data PATH"
            )
        if (
            identity.get("geometry")
            and geometry_checksum(reader.structures()) != identity["geometry"]
        ):
            raise DataError(
                f"{path} is not the dataset {loaded.path} was trained on: the same molecule ids "
                "and recipe, but other geometries (replaced or edited since); pass --data PATH"
            )
    return path


def _split_ids(loaded: LoadedModel, split: str) -> list[int]:
    if split not in ("train", "val", "test", "all"):
        raise DataError(f"--split {split!r}: not a split (train, val, test or all)")
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


def _checked(dataset: HamiltonianDataset) -> HamiltonianDataset:
    """``dataset`` once its records fit the layout (byte counts only): a broken record stops a
    command here, not after minutes of ``H0`` or model evaluations."""
    dataset.check_sizes()
    return dataset


def evaluation_dataset(
    loaded: LoadedModel, data: str | Path | None = None, split: str | None = None
) -> tuple[HamiltonianDataset, str]:
    """The labelled molecules to score a model on, and a label saying which.

    Without ``data``: the checkpoint's own dataset, its recorded ``split`` (default ``test``).
    With ``data``: every molecule of that file, or the recorded ``split``'s ids in it; the
    file's basis and elements must fit the checkpoint's AO layout.
    """
    layout = loaded.layout
    if data is None:
        path = run_data_path(loaded)
        split = split or "test"
        ids = _split_ids(loaded, split)
        dataset = _checked(HamiltonianDataset(path, layout=layout, ids=ids))
        return dataset, f"{path} (split: {split})"
    path = Path(data)
    if not path.exists():
        raise DataError(not_found(path, "dataset file"))
    try:
        probe = HamiltonianDataset(path, basis=layout.basis)
    except DataError as err:
        raise DataError(
            f"{err} (checkpoint {loaded.path} was trained on {layout.basis} labels)"
        ) from None
    extra = sorted(set(probe.layout.elements) - set(layout.elements))
    if extra:
        raise DataError(
            f"{path}: element(s) {', '.join(symbol(z) for z in extra)} are not in the "
            f"checkpoint's AO layout ({layout.basis}: "
            f"{' '.join(symbol(z) for z in layout.elements)}); {loaded.path} cannot predict them"
        )
    if split is None or split == "all":
        return _checked(HamiltonianDataset(path, layout=layout)), f"{path} (all molecules)"
    ids = _split_ids(loaded, split)
    missing = sorted(set(ids) - set(probe.ids))
    if missing:
        raise DataError(
            f"{path}: lacks {len(missing)} molecule id(s) of the checkpoint's {split} split "
            f"(e.g. {missing[:5]}); is it the run's dataset?"
        )
    return _checked(HamiltonianDataset(path, layout=layout, ids=ids)), f"{path} (split: {split})"


def select_records(
    loaded: LoadedModel, data: Path | None, split: str | None, limit: int | None
) -> tuple[HamiltonianDataset, list[MoleculeRecord], str]:
    """Records (labels in PySCF order) chosen as ``deqh evaluate`` chooses them
    (:func:`evaluation_dataset`), the first ``limit`` of them: ``(dataset, records, note)``,
    the note saying what was chosen."""
    dataset, note = evaluation_dataset(loaded, data, split)
    records = list(itertools.islice(dataset.records(), limit))
    return dataset, records, f"{note}: {len(records)} molecule(s)"
