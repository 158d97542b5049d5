"""The training engine behind ``deqh train``: deterministic, resumable, checkpointed.

Batches are drawn from a permutation seeded by ``(seed, epoch)``, so the data order is a
function of the step alone; together with the saved model, optimiser, scheduler, EMA and RNG
states, a run killed and resumed (``resume=True``) ends exactly where a straight run does.
Checkpoints ``last.pt`` (every validation) and ``best.pt`` (best validation H MAE) are written
atomically; ``metrics.csv`` logs every ``log_every`` steps and every validation.

Multi-GPU / multi-node: launch with ``torchrun --nproc_per_node N -m deqh_core train ...``. Each
rank then trains on its own batches (every N-th batch of the epoch's order) under
``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU); rank 0 alone writes logs and
checkpoints; every rank validates on the whole validation set.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch_geometric.loader import DataLoader

from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.domain import TrainingDomain
from deqh_core.data.recipe import Recipe
from deqh_core.data.splits import (
    Split,
    group_split,
    groups_from_sources,
    qh9_stable_id_split,
    qh9_stable_ood_split,
    random_split,
    size_ood_split,
    within_group_split,
)
from deqh_core.solvers.deq import DEQFailure, DEQHamiltonianSolver, nonfinite_message
from deqh_core.solvers.prior import InitialGuess, PriorCache
from deqh_core.solvers.protocol import StepScheduled
from deqh_core.training.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    model_difference,
    recorded_model,
    rng_state,
    same_model,
    save_checkpoint,
    set_rng_state,
)
from deqh_core.training.config import ConfigError, TrainConfig, resume_config, save_config
from deqh_core.training.metrics import MAEAccumulator, training_loss
from deqh_core.training.model import HamiltonianModel, n_parameters
from deqh_core.util.device import resolve_device, to_device
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import check_output_dir, not_found
from deqh_core.util.progress import tracked


def make_split(dataset: HamiltonianDataset, config) -> Split:
    """The run's split of ``dataset.ids`` per ``config`` (a ``DataConfig``); reads atom counts
    and sources only, never the matrices.

    Raises:
        DataError: sizes the file cannot fill, naming the file and ``data.sizes``.
    """
    try:
        return _split(dataset, config)
    except DeqhError:
        raise
    except ValueError as err:  # the split functions' own checks (sizes against ids)
        raise DataError(
            f"{dataset.path}: data.split={config.split!r} with data.sizes={config.sizes!r}: {err}"
        ) from None


def _split(dataset: HamiltonianDataset, config) -> Split:
    ids = dataset.ids
    if config.split == "random":
        return random_split(ids, config.sizes, config.split_seed)
    if config.split == "qh9_stable_id":  # membership by QH9-stable id: any subset splits as QH9
        return qh9_stable_id_split(ids)
    by_id = {info.id: info for info in dataset.reader.infos()}
    infos = [by_id[i] for i in ids]
    if config.split == "size_ood":
        return size_ood_split(ids, [len(info.atomic_numbers) for info in infos])
    if config.split == "qh9_stable_ood":
        return qh9_stable_ood_split(ids, [len(info.atomic_numbers) for info in infos])
    groups = groups_from_sources(
        [info.source for info in infos], [info.atomic_numbers for info in infos]
    )
    if config.split == "group":
        return group_split(ids, groups, config.sizes, config.split_seed)
    return within_group_split(ids, groups, config.sizes, config.split_seed)


def _lr_lambda(config, step: int) -> float:
    o = config.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min((step - o.warmup_steps) / max(o.max_steps - o.warmup_steps, 1), 1.0)
    floor = o.end_lr / o.lr
    if o.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress) ** o.power


class _StepBatches:
    """Batch sampler of a run from ``start`` on: this rank's share of every epoch's batches,
    epoch after epoch (the order is a function of the step alone, see ``Trainer``)."""

    def __init__(self, trainer: Trainer, start: int):
        self.trainer, self.start = trainer, start

    def __iter__(self):
        t = self.trainer
        per_epoch = t.batches_per_epoch()
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            batches = t._epoch_batches(epoch)[: per_epoch * t.world]
            yield from batches[skip * t.world :][t.rank :: t.world]
            epoch, skip = epoch + 1, 0


@dataclass
class TrainResult:
    step: int
    best: dict[str, float]
    last: dict[str, float]
    out: Path
    parameters: int


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group torchrun describes, if any."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank (one ``all_reduce`` of them all); the flags themselves when
    not distributed. Every decision that ends the loop (deadline, non-finite loss) goes
    through it, so all ranks leave the loop at the same step."""

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [bool(f) for f in flags]
    mine = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    return [bool(v) for v in mine.tolist()]


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.rank, self.world = _distributed()
        self.device = resolve_device(config.run.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.dtype = getattr(torch, config.run.dtype)
        torch.manual_seed(config.run.seed)
        path = config.data.path or BUNDLED
        if not Path(path).is_file():
            raise DeqhError(
                f"{not_found(path, 'dataset file')} (relative paths are from the working "
                "directory; docs/reproduce.md says how to obtain each preset's data; --data PATH)"
            )
        dataset = HamiltonianDataset(path, basis=config.data.basis)
        self.split = make_split(dataset, config.data)
        dataset.check_sizes(self.split.train + self.split.val)  # at step 0, not mid-run
        self.layout = dataset.layout
        self.identity = dataset.identity()  # the file and its labels' recipe, for checkpoints
        recipe = Recipe(**self.identity["recipe"])
        # a prior, or a DEQ started from a PySCF guess, needs H0 on every item: computed once
        # per molecule into an on-disk cache the items then read (filled by fit())
        guess = InitialGuess.for_run(config, self.layout.basis, recipe.model_dump())
        if guess is not None:
            guess.cache = PriorCache(path, guess.recipe, guess.kind, self.identity["geometry"])
        self.prior = guess
        d = config.data
        sets = [
            HamiltonianDataset(
                path,
                layout=self.layout,
                ids=ids,
                dtype=self.dtype,
                overlap="onsite",  # a model reads S's on-site blocks only
                cache=d.cache,
                cache_mb=d.cache_mb / max(d.num_workers, 1),
                transform=guess,
            )
            for ids in (self.split.train, self.split.val)
        ]
        self.train_set, self.val_set = sets
        if not len(self.train_set) or not len(self.val_set):
            raise DeqhError(
                f"{path}: data.split={config.data.split!r} with data.sizes={config.data.sizes!r} "
                f"leaves {len(self.train_set)} training and {len(self.val_set)} validation "
                f"molecules of its {len(dataset.ids)}; both need at least one"
            )
        self.val_loader = DataLoader(
            self.val_set, batch_size=d.val_batch_size or d.batch_size, **self._loader_options()
        )
        structures = ((z, pos) for _, z, pos in self.train_set.structures())
        self.domain = TrainingDomain.from_structures(structures, recipe.charge)
        self.model = HamiltonianModel(config.model, self.layout, config.deq)
        self.model.to(self.device, self.dtype)
        if isinstance(self.model.net, DEQHamiltonianSolver):
            # the solver reports a broken solve and the loop raises on every rank at once
            # (a rank raising alone would leave the others waiting in a collective)
            self.model.net.report_failures()
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_lambda(config, step)
        )
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(o.ema_decay))
            if o.ema
            else None
        )
        # modules whose behaviour follows the step (a backbone's sparsity schedule, ...)
        self.scheduled = [m for m in self.model.modules() if isinstance(m, StepScheduled)]
        self.step = 0
        self.best: dict[str, float] = {}
        self.out = Path(config.run.out)

    # -- data ------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Optimiser steps per epoch (with N ranks, N batches make one step)."""
        batches = math.ceil(len(self.train_set) / self.config.data.batch_size)
        return batches if self.world == 1 else max(batches // self.world, 1)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.config.run.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_set), generator=g).tolist()
        size = self.config.data.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _loader_options(self) -> dict:
        """DataLoader options: worker processes that live for the whole run and prepare
        ``prefetch_factor`` batches each ahead of the model."""
        d = self.config.data
        if not d.num_workers:
            return {}
        return {
            "num_workers": d.num_workers,
            "persistent_workers": True,
            "prefetch_factor": d.prefetch_factor,
            "pin_memory": self.device.type == "cuda",
        }

    def _train_batches(self):
        """Batches from the current step on, forever, through one DataLoader."""
        sampler = _StepBatches(self, self.step)
        return iter(DataLoader(self.train_set, batch_sampler=sampler, **self._loader_options()))

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "best": self.best,
            "config": self.config.model_dump(mode="json"),
            "describe": self.model.describe(),
            "split": {"train": self.split.train, "val": self.split.val, "test": self.split.test},
            "data": self.identity,
            "domain": self.domain.as_dict(),
            "rng": rng_state(),
            "format": FORMAT,
        }

    def restore(self, state: dict) -> None:
        if not same_model(recorded_model(state), self.model.describe()):
            raise CheckpointError(
                "the checkpoint's model is not this run's (checkpoint -> this run: "
                f"{model_difference(state['describe'], self.model.describe())})"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        recorded = (state.get("data") or {}).get("checksum")
        if recorded is not None and recorded != self.identity["checksum"]:
            raise CheckpointError(
                f"{self.identity['path']} is not the dataset this run was trained on (its ids or "
                f"recipe differ from the checkpoint's record of {state['data']['path']})"
            )
        recorded = (state.get("data") or {}).get("geometry")  # older checkpoints have none
        if recorded is not None and recorded != self.identity["geometry"]:
            raise CheckpointError(
                f"{self.identity['path']} is not the dataset this run was trained on: the same "
                "molecule ids and recipe, but other geometries (replaced or edited since)"
            )
        self.step, self.best = state["step"], state["best"]
        set_rng_state(state["rng"])

    def _fill_prior(self) -> None:
        """Compute the missing ``H0`` of the train and val molecules into the prior cache:
        every rank its share (``id % world == rank``) with ``data.prior_workers`` processes
        shared out among the ranks, then wait until all are there (a file, not a collective:
        filling QH9 can take longer than a collective's timeout)."""
        if self.prior is None:
            return
        d = self.config.data
        ids = self.split.train + self.split.val
        structures = list(self.train_set.structures(ids))
        workers = max((d.prior_workers or os.cpu_count() or 1) // self.world, 1)
        progress = self.config.run.progress and self.rank == 0
        self.prior.cache.fill(structures, workers, progress, shard=(self.rank, self.world))
        self.prior.cache.wait(structures)

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_model(self) -> HamiltonianModel:
        started = self.ema is not None and self.step > self.config.optim.ema_start_step
        return self.ema.module if started else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.evaluation_model()
        model.eval()
        mae, nfe, residual, converged = MAEAccumulator(), [], [], []
        for batch in self.val_loader:
            batch = to_device(batch, self.device, self.dtype)
            pred, diagnostics = model(batch)
            mae.update(pred, batch)
            if diagnostics is not None:  # per molecule: the residual and converged flag of each
                nfe.append(diagnostics.nfe)
                residual.append(diagnostics.abs_residual.double())
                converged.append(diagnostics.converged.double())
        model.train()
        result = mae.result()
        if nfe:
            residuals = torch.cat(residual)
            result |= {
                "deq_nfe": float(np.mean(nfe)),
                "deq_residual": float(residuals.max()),  # the worst molecule's
                "deq_residual_mean": float(residuals.mean()),
                "deq_converged": float(torch.cat(converged).mean()),  # share of molecules
                "deq_molecules": len(residuals),
            }
        return result

    # -- the loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``optim.max_steps`` (or ``stop_at_step``, as if killed there)."""
        cfg = self.config
        check_output_dir(self.out, "run.out (--out)")
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        if resume:
            self.restore(load_checkpoint(last, self.device))
        elif last.exists():
            raise DeqhError(
                f"{self.out} already holds a run; pass --resume to continue it or choose "
                "another --out (nothing was overwritten)"
            )
        lead = self.rank == 0
        self._fill_prior()  # after the resume checks: never hours of H0 for the wrong data
        if lead:
            save_config(cfg, self.out / "config.yaml")
            self.split.to_json(self.out / "split.json")
        log = (
            _MetricsLog(self.out / "metrics.csv", self.step, cfg.run.tensorboard) if lead else None
        )
        end = min(cfg.optim.max_steps, stop_at_step or cfg.optim.max_steps)
        deadline = time.time() + 60 * cfg.run.max_minutes if cfg.run.max_minutes else None
        self.model.train()
        metrics: dict[str, float] = {}
        with tracked(
            "train",
            end - self.step,
            cfg.run.progress and lead,
            status="{task.fields[status_text]}",
            status_text="",
        ) as advance:
            for batch in self._train_batches():
                if self.step >= end:
                    break
                batch = to_device(batch, self.device, self.dtype)
                for module in self.scheduled:
                    module.training_step(self.step, cfg.optim.max_steps)
                pred, diagnostics = self.net(batch)
                loss = training_loss(pred, diagnostics, batch, cfg.deq.residual_weight)
                # decided together: one rank stopping alone would leave the others waiting
                broken = diagnostics is not None and diagnostics.failed
                nonfinite, broken, late = agree(
                    [
                        not bool(torch.isfinite(loss)),
                        broken and cfg.deq.on_failure == "raise",
                        bool(deadline and time.time() > deadline),
                    ],
                    self.device,
                )
                where = "" if self.world == 1 else " on at least one rank"
                if broken:
                    raise DEQFailure(
                        nonfinite_message(cfg.deq, diagnostics.abs_trace, batch)
                        if diagnostics is not None and diagnostics.failed
                        else f"DEQ forward solve failed at step {self.step}{where}; stopping"
                    )
                if nonfinite:
                    raise DeqhError(f"loss is {loss.item()} at step {self.step}{where}; stopping")
                if late:
                    break
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = cfg.optim.clip_grad_norm or float("inf")  # inf: measures, clips nothing
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                if agree([not bool(torch.isfinite(norm))], self.device)[0]:
                    raise DEQFailure(
                        f"non-finite gradient at step {self.step}{where} (e.g. the implicit "
                        "gradient's backward solve diverged; try deq.grad=phantom); stopping"
                    )
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if self.ema is not None and self.step > cfg.optim.ema_start_step:
                    self.ema.update_parameters(self.model)
                if self.ema is not None:  # buffers (a frozen selection, ...) follow, unaveraged
                    for kept, current in zip(self.ema.module.buffers(), self.model.buffers()):
                        kept.copy_(current)
                if lead and self.step % cfg.run.log_every == 0:
                    row = {
                        "step": self.step,
                        "split": "train",
                        "loss": loss.item(),
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    if diagnostics is not None:
                        row["deq_nfe"] = diagnostics.nfe
                        row["deq_residual"] = float(diagnostics.abs_residual.max())
                    log.write(row)
                if self.step % cfg.run.val_every == 0 or self.step == end:
                    metrics = self._validate_and_save(log)
                mae = metrics.get("mae_all")
                status = f"loss {loss.item():.2e}" + (f"  val MAE {mae:.2e} Ha" if mae else "")
                advance(text=status)
        if not metrics or metrics.get("step") != self.step:
            metrics = self._validate_and_save(log)
        if log is not None:
            log.close()
        return TrainResult(self.step, self.best, metrics, self.out, n_parameters(self.model))

    def _validate_and_save(self, log: _MetricsLog | None) -> dict[str, float]:
        metrics = {"step": self.step} | self.validate()
        if log is None:  # not rank 0
            if not self.best or metrics["mae_all"] < self.best["mae_all"]:
                self.best = metrics
            return metrics
        log.write({"split": "val"} | metrics)
        if not self.best or metrics["mae_all"] < self.best["mae_all"]:
            self.best = metrics
            save_checkpoint(self.state(), self.out / "best.pt")
        save_checkpoint(self.state(), self.out / "last.pt")
        return metrics


class _MetricsLog:
    """Append-only CSV (and TensorBoard scalars under ``tensorboard/`` when the tensorboard
    package is installed and ``run.tensorboard``); on resume, what was logged after the
    checkpoint's step is dropped from both."""

    FIELDS = (
        "step",
        "split",
        "loss",
        "lr",
        "mae_all",
        "mae_diag",
        "mae_off",
        "deq_nfe",
        "deq_residual",
        "deq_residual_mean",
        "deq_converged",
        "time",
    )

    def __init__(self, path: Path, keep_until: int, tensorboard: bool = False):
        self.path = path
        self.board = None
        if tensorboard:
            try:
                # optional dependency: pip install 'deqh[tensorboard]'
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.board = SummaryWriter(path.parent / "tensorboard", purge_step=keep_until + 1)
        rows = []
        if path.exists() and keep_until > 0:
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        # ``time``: seconds of training since the run began, across resumes (a resumed run goes
        # on from the time of its last kept row)
        self.start = time.time() - max((float(r["time"] or 0) for r in rows), default=0.0)

    def write(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in self.FIELDS} | {
            "time": round(time.time() - self.start, 3)
        }
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)
        if self.board is not None:
            for key in self.FIELDS[2:-1]:
                if row[key] != "":
                    self.board.add_scalar(f"{row['split']}/{key}", float(row[key]), row["step"])
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def resumed_config(out: str | Path, requested: list[dict]) -> tuple[TrainConfig, list[str]]:
    """The config that continues the run in ``out`` (from its ``last.pt``), with the
    ``requested`` overrides that are sound for a resumed run
    (:func:`deqh_core.training.config.resume_config`; the others are refused, never dropped).

    Everything is written to ``out``, whatever ``run.out`` the checkpoint recorded. The dataset
    is looked up as configured (relative to the working directory), then at the absolute path
    the checkpoint recorded; :meth:`Trainer.restore` checks it is the same dataset. Returns the
    config and notes on what was changed or looked up.
    """

    out = Path(out)
    state = load_checkpoint(out / "last.pt")
    cfg, changes = resume_config(state["config"], requested, out)
    notes = [f"{key}: {old!r} -> {new!r}" for key, old, new in changes]
    if cfg.optim.max_steps < state["step"]:
        raise ConfigError(
            f"optim.max_steps (--steps) = {cfg.optim.max_steps}, but {out}/last.pt is already at "
            f"step {state['step']}"
        )
    data = cfg.data.path
    if data is not None and not Path(data).is_file():
        recorded = (state.get("data") or {}).get("path")
        given = any(_flat_has(r, "data", "path") for r in requested)
        if given or not recorded or not Path(recorded).is_file():
            where = "" if given or not recorded else f" nor at {recorded}"
            raise DataError(f"the run's dataset {data} is not here{where}; pass --data PATH")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": Path(recorded)})})
        notes.append(f"data.path: {str(data)!r} is not here; using {recorded} (recorded)")
    return cfg, notes


def _flat_has(values: dict, section: str, key: str) -> bool:
    return isinstance(values.get(section), dict) and key in values[section]


def train(
    config: TrainConfig, resume: bool = False, stop_at_step: int | None = None
) -> TrainResult:
    return Trainer(config).fit(resume=resume, stop_at_step=stop_at_step)
