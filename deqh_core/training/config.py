"""Run configuration: one pydantic model per concern, loadable from YAML/TOML, overridable.

``TrainConfig`` = ``data`` + ``model`` + ``deq`` + ``optim`` + ``run``. Unknown keys are errors
everywhere. Presets hold the paper's settings (Table 4) and a small CPU setting for the README's
main job; a file or flags override a preset; the resolved config is saved next to every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from deqh_core.data.splits import parse_sizes
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.deq import DEQConfig
from deqh_core.util.errors import ConfigError, validation_message
from deqh_core.util.files import atomic_write, parse_yaml, read_settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Strict):
    path: Path | None = Field(
        None, description="dataset file; None = the bundled water/ethanol set"
    )
    basis: str | None = Field(None, description="basis of the labels if the file records none")
    split: Literal[
        "random", "size_ood", "group", "within_group", "qh9_stable_id", "qh9_stable_ood"
    ] = Field(
        "random",
        description="qh9_stable_*: QH9's parts by QH9-stable id, for files made by deqh data qh9",
    )
    sizes: str = Field("0.8/0.1/0.1", description="train/val/test fractions or counts")

    @field_validator("sizes")
    @classmethod
    def _readable_sizes(cls, sizes: str) -> str:
        parse_sizes(sizes)  # raises ValueError naming what is wrong
        return sizes

    split_seed: int = 0
    batch_size: int = Field(8, ge=1)
    val_batch_size: int | None = Field(None, ge=1)
    cache: bool = Field(False, description="keep built molecules in memory, up to cache_mb")
    cache_mb: float = Field(
        1024, ge=0, description="memory budget of that cache, MiB (shared out among workers)"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (persistent)")
    prior_workers: int = Field(
        0, ge=0, description="processes computing the prior H0 before training; 0 = all CPUs"
    )
    prefetch_factor: int = Field(4, ge=1, description="batches each worker prepares ahead")


class ModelConfig(_Strict):
    backbone: str = "qhnet"
    deq: bool = Field(False, description="wrap the backbone as a DEQ Hamiltonian solver")
    overlap: bool | None = Field(
        None, description="feed the overlap's diagonal reduction; None = same as deq (DEQHNet)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="backbone hyperparameters")
    prior: Literal["none", "1e", "minao"] = Field(
        "none",
        description="learn the correction to PySCF's core Hamiltonian (1e) or minao Fock matrix "
        "(minao), H = H0 + f; a DEQ then starts at H0; none = the paper",
    )
    prior_basis: Literal["ao", "lowdin"] = Field(
        "ao",
        description="basis of the correction f: ao (H = H0 + f) or lowdin (H = H0 + S^1/2 f "
        "S^1/2, f corrects the Lowdin-orthogonalised Hamiltonian); default lowdin with a prior, "
        "ao without (config version 2; version 1 meant ao always)",
    )

    @model_validator(mode="before")
    @classmethod
    def _lowdin_with_a_prior(cls, values: Any) -> Any:
        # a prior's correction is learnt in the Lowdin basis unless told otherwise: its orbitals
        # and SCF starts are far better (docs/training.md)
        if isinstance(values, dict) and "prior_basis" not in values:
            if values.get("prior", "none") != "none":
                values = {**values, "prior_basis": "lowdin"}
        return values

    @property
    def reads_s(self) -> bool:
        return self.deq if self.overlap is None else self.overlap


class OptimConfig(_Strict):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int = Field(1000, ge=1)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["polynomial", "cosine", "constant"] = "polynomial"
    end_lr: float = Field(1e-7, ge=0)
    power: float = Field(1.0, gt=0)
    clip_grad_norm: float | None = Field(10.0, gt=0)
    ema: bool = False
    ema_decay: float = Field(0.99, gt=0, lt=1)
    ema_start_step: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ema_starts(self) -> OptimConfig:
        if self.ema and self.ema_start_step >= self.max_steps:
            raise ValueError(
                f"ema_start_step={self.ema_start_step} is not before max_steps={self.max_steps}: "
                "EMA would never start and evaluation would silently use the raw weights"
            )
        return self


class RunConfig(_Strict):
    out: Path = Path("runs/default")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
    val_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop after this wall time")
    progress: bool = True
    tensorboard: bool = Field(True, description="also log to TensorBoard when it is installed")


CONFIG_VERSION = 2
"""Version of what a config means. 1 (configs deqh wrote before they had a ``version`` key):
``model.prior_basis`` is ``ao`` unless given; 2: ``lowdin`` when a prior is set."""


def upgrade_config(values: dict, written_as: int = 1) -> dict:
    """``values`` of a config written at version ``values["version"]`` (``written_as`` when it
    has none), keeping the meaning it had then, at :data:`CONFIG_VERSION`."""
    version = values.get("version", written_as)
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(
            f"version: {version!r} is not a config version of this deqh (1 to {CONFIG_VERSION})"
        )
    values = {**values, "version": CONFIG_VERSION}
    model = values.get("model")
    if version < 2 and isinstance(model, dict) and "prior_basis" not in model:
        values["model"] = {**model, "prior_basis": "ao"}
    return values


class TrainConfig(_Strict):
    version: int = Field(
        CONFIG_VERSION,
        ge=1,
        le=CONFIG_VERSION,
        description="what the config means (upgrade_config)",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    deq: DEQConfig = DEQConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _one_starting_hamiltonian(self) -> TrainConfig:
        if self.model.prior_basis != "ao" and self.model.prior == "none":
            raise ValueError(
                "model.prior_basis applies to the correction of a prior: set model.prior"
            )
        prior, init = self.model.prior, self.deq.init
        if self.model.deq and prior != "none" and init not in ("identity", prior):
            raise ValueError(
                f"model.prior={prior!r} starts the DEQ at its H0, but deq.init={init!r}; "
                "leave deq.init at identity (or set it to the prior)"
            )
        if self.deq.feedback == "full" and not self.model.deq:
            raise ValueError("deq.feedback = full feeds back the DEQ's iterate: set model.deq")
        return self


def _qh9(path: str, split: str, steps: int, split_seed: int = 0) -> dict:
    """QH9 presets: Table 4 plus the reference scripts' schedule (divelab/AIRS QH9 configs, as
    in the public DEQHNet code): AdamW at 5e-4, 1,000 warm-up steps, linear decay to 1e-7 at
    ``steps`` (QH9-stable 300,000; QH9-dynamic 260,000), gradient clip 5, batch 32, 8 loader
    workers, validation every 1,000 steps."""
    return {
        "data": {
            "path": path,
            "split": split,
            "split_seed": split_seed,
            "batch_size": 32,
            "num_workers": 8,
        },
        "optim": {
            "lr": 5e-4,
            "max_steps": steps,
            "warmup_steps": 1000,
            "end_lr": 1e-7,
            "clip_grad_norm": 5.0,
        },
        "deq": DEQConfig.preset("qh9").model_dump(),
        "run": {"val_every": 1000, "log_every": 100},
    }


def _md17(file: str, batch: int, lr: float, sizes: str, ema_start_epoch: int = 0) -> dict:
    """MD17 presets: Table 4 plus the reference training script's schedule (public DEQHNet /
    QHNet code): 200,000 steps, 1,000 warm-up, linear decay to 1e-8, gradient clip 1, EMA
    (decay 0.99) from epoch ``ema_start_epoch`` (40 for water, 0 otherwise), expressed in steps
    of the preset's own batch size, and the reference split (seed 42)."""
    n_train = int(sizes.split("/")[0])
    return {
        "data": {
            "path": f"data/{file}",
            "sizes": sizes,
            "split_seed": 42,
            "batch_size": batch,
            "num_workers": 4,
        },
        "optim": {
            "lr": lr,
            "max_steps": 200_000,
            "warmup_steps": 1000,
            "end_lr": 1e-8,
            "clip_grad_norm": 1.0,
            "ema": True,
            "ema_start_step": ema_start_epoch * -(-n_train // batch),
        },
        "deq": DEQConfig.preset("md17").model_dump(),
        "run": {"val_every": 1000, "log_every": 100},
    }


# A QHNet small enough to train in minutes on a 2-core CPU (125 k parameters as DEQHNet).
_CPU_QHNET = {
    "channels": 16,
    "bottleneck": 8,
    "l_max": 2,
    "layers": 2,
    "interaction_layers": 1,
    "cutoff": 5.0,
    "num_rbf": 16,
    "radial_hidden": 16,
    "filter_irreps": "16x0e+8x1o+4x2e",
    "filter_channels": 8,
    "attention_heads": 2,
    "filter_radial_hidden": 16,
}
# up to 6 evaluations per training step (stopping at 1e-3 Ha): enough for the trained map to
# keep a fixed point the solver reaches, not for the training solve to reach it every step; up
# to 40 at evaluation, where each molecule stops on its own: with 12, 4 of the main job's 20
# validation molecules stopped short (80 % converged), with 40 all converge (docs/training.md)
_CPU_DEQ = {"f_max_iter": 6, "b_max_iter": 6, "eval_f_max_iter": 40, "f_tol": 1e-3}

PRESETS: dict[str, dict] = {
    # the README's main job: minutes on a 2-core CPU, bundled data
    "cpu-small": {
        "data": {"batch_size": 4, "sizes": "0.8/0.1/0.1"},
        "model": {"params": _CPU_QHNET},
        "deq": _CPU_DEQ,
        "optim": {"lr": 2e-3, "max_steps": 2000, "warmup_steps": 50},
        "run": {"val_every": 250, "out": "runs/cpu-small"},
    },
    # real QH9-stable molecules on a 2-core CPU: the QH9-stable-id train/val molecules with at
    # most 10 atoms (623/70), as in ../shared or made by `deqh data qh9` (docs/reproduce.md)
    "qh9-small": {
        # items kept in memory after their first load (~200 MB): with a prior every item
        # otherwise rebuilds its PySCF overlap and S^(1/2) each epoch (a QHNet step with the
        # minao prior 0.28 s -> 0.08 s after the first epoch, same losses to the bit)
        "data": {
            "path": "../shared/data/qh9_stable_small.db",
            "split": "qh9_stable_id",
            "batch_size": 8,
            "cache": True,
        },
        "model": {"params": _CPU_QHNET},
        # evaluation damped: with the minao prior the plain iteration oscillates for 2 of the 70
        # validation molecules at any iteration limit (97.1 % converged at 40 and at 100
        # evaluations); tau = 0.5 converges all 70, same H MAE (docs/training.md)
        "deq": {**_CPU_DEQ, "eval_f_tau": 0.5},
        "optim": {"lr": 2e-3, "max_steps": 6000, "warmup_steps": 100},
        "run": {"val_every": 500, "out": "runs/qh9-small"},
    },
    # Table 4 with the reference schedules; data files as docs/reproduce.md obtains them.
    # SchNOrb water holds 4,900 geometries: the reference split is 500/500/rest.
    "md17-water": _md17("schnorb_hamiltonian_water.db", 10, 5e-4, "500/500/rest", 40),
    "md17-ethanol": _md17("schnorb_hamiltonian_ethanol_dft.db", 5, 1e-3, "25000/500/4500"),
    "md17-malondialdehyde": _md17(
        "schnorb_hamiltonian_malondialdehyde.db", 5, 1e-3, "25000/500/1478"
    ),
    "md17-uracil": _md17("schnorb_hamiltonian_uracil.db", 5, 1e-3, "25000/500/4500"),
    # QH9-stable splits by QH9-stable id: the same parts for the whole file or any subset
    "qh9-stable-id": _qh9("data/QH9Stable.db", "qh9_stable_id", 300_000),
    "qh9-stable-ood": _qh9("data/QH9Stable.db", "qh9_stable_ood", 300_000),
    "qh9-dynamic-geo": _qh9("data/QH9Dynamic_100k.db", "within_group", 260_000, 43),
    "qh9-dynamic-mol": _qh9("data/QH9Dynamic_100k.db", "group", 260_000, 43),
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"optim.lr=1e-3"`` -> ``{"optim": {"lr": 0.001}}`` (the value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parse_yaml(value, f"override {text!r}")
    return nested


_SECTIONS = {k for k, f in TrainConfig.model_fields.items() if isinstance(f.default, BaseModel)}


def _preset_for(preset: str, sources: list[dict]) -> dict:
    """``PRESETS[preset]``, its model sized for the backbone the sources choose: a preset's
    ``model.params`` are QHNet's; another backbone brings its own (``BackboneSpec.presets``)."""
    values = PRESETS[preset]
    params = values.get("model", {}).get("params")
    sized_for = backbone = values.get("model", {}).get("backbone", "qhnet")
    for update in sources:
        model = update.get("model")
        if isinstance(model, dict) and isinstance(model.get("backbone"), str):
            backbone = model["backbone"]
    if params is None or backbone == sized_for:
        return values
    spec = get_backbone(backbone)
    if preset not in spec.presets:
        raise ConfigError(
            f"preset {preset!r} sizes QHNet, and backbone {backbone!r} has no size for it "
            f"(its presets: {', '.join(spec.presets) or 'none'}); choose its size with "
            "--set model.params=... or a config file"
        )
    return {**values, "model": {**values["model"], "params": dict(spec.presets[preset])}}


def load_config(
    preset: str | None = None, file: str | Path | None = None, *overrides: dict
) -> TrainConfig:
    """Preset, then file, then overrides (later wins), validated; errors name the field."""
    values: dict = {}
    where = f" in {file}" if file else ""
    sources = ([read_settings(file)] if file is not None else []) + list(overrides)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        values = _merge(values, _preset_for(preset, sources))
    for update in sources:
        for key in _SECTIONS & set(update):  # merged over a preset, a non-mapping erases it
            if not isinstance(update[key], dict):
                raise ConfigError(
                    f"invalid configuration{where}: {key}: a section of settings "
                    f"(key: value), not {update[key]!r}"
                )
        values = _merge(values, update)
    try:
        values = upgrade_config(values, written_as=CONFIG_VERSION)  # a file may say `version: 1`
        return TrainConfig.model_validate(values)
    except ConfigError as err:
        raise ConfigError(f"invalid configuration{where}: {err}") from None
    except ValidationError as err:
        raise ConfigError(f"invalid configuration{where}: {validation_message(err)}") from None


def resolved(config: TrainConfig) -> dict:
    """The config as plain data with the backbone's hyperparameters filled in from its own
    defaults (what ``deqh train --print-config`` prints); errors name the bad field."""

    spec = get_backbone(config.model.backbone)
    try:
        params = spec.config(**config.model.params).model_dump(mode="json")
    except ValidationError as err:
        problems = validation_message(err, "model.params.")
        raise ConfigError(f"backbone {spec.name!r}: {problems}") from None
    out = config.model_dump(mode="json")
    out["model"]["params"] = params
    return out


RESUMABLE = frozenset(
    {
        "optim.max_steps",
        "model.params.ops",  # every ops backend computes the same model (deqh_core.ops)
        "data.path",
        "data.num_workers",
        "data.cache",
        "data.cache_mb",
        "data.prior_workers",
        "data.prefetch_factor",
        "data.val_batch_size",
        "run.device",
        "run.max_minutes",
        "run.val_every",
        "run.log_every",
        "run.progress",
        "run.tensorboard",
    }
)
"""Fields a resumed run may change: more (or fewer) steps, where the same data lies, and how the
run is executed and logged. Everything else would make it another run."""

FLAGS = {
    "model.backbone": "--backbone",
    "model.deq": "--deq",
    "model.overlap": "--overlap",
    "data.path": "--data",
    "data.batch_size": "--batch-size",
    "optim.max_steps": "--steps",
    "optim.lr": "--lr",
    "run.device": "--device",
    "run.dtype": "--dtype",
    "run.seed": "--seed",
    "run.progress": "--progress",
}
"""The ``deqh train`` flag of a config field, for messages."""


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _name(key: str) -> str:
    return f"{key} ({FLAGS[key]})" if key in FLAGS else key


def resume_config(saved: dict, requested: list[dict], out: str | Path) -> tuple[TrainConfig, list]:
    """The config of a resumed run: the checkpoint's ``saved`` config with ``run.out = out`` and
    the ``requested`` overrides that :data:`RESUMABLE` allows.

    Returns ``(config, changes)``, ``changes`` a list of ``(field, old, new)``. Raises
    :class:`ConfigError` naming every requested change that would make it another run (an
    override equal to the saved value is no change and is accepted).
    """
    base = load_config(None, None, upgrade_config(saved), {"run": {"out": str(out)}})
    merged = load_config(None, None, base.model_dump(mode="json"), *requested)
    old, new = _flat(base.model_dump(mode="json")), _flat(merged.model_dump(mode="json"))
    changed = [k for k in new if new[k] != old.get(k)]
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        what = "; ".join(f"{_name(k)}: {old.get(k)!r} -> {new[k]!r}" for k in refused)
        raise ConfigError(
            f"--resume continues the run in {out} as it was configured; refusing changes that "
            f"would make it another run: {what}. Start a new run (another --out) for those"
        )
    return merged, [(k, old.get(k), new[k]) for k in changed]


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""

    atomic_write(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
