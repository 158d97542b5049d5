"""``deqh ablate``: the paper's ablation (Fig. 5) in one command.

Variants of one backbone, trained on the same split with the same budget and evaluated on
the same molecules (the paper's four by default):

=================  ===========  ===========  ==========================================
variant            DEQ solver   reads S      the paper's name
=================  ===========  ===========  ==========================================
``deqhnet``        yes          yes          DEQHNet
``deqhnet-no-s``   yes          no           DEQHNet without the overlap matrix
``qhnet``          no           no           QHNet (the predictor)
``qhnet-s``        no           yes          QHNet with the overlap matrix
``deqhnet-full``   yes          yes          (not in the paper) DEQHNet whose iteration also
                                             reads the off-diagonal blocks (``deq.feedback``
                                             ``full``); for backbones that read pair features
=================  ===========  ===========  ==========================================

``seeds`` > 1 trains every run again with the seeds ``run.seed + k`` (``k = 1 .. seeds-1``),
as runs ``<run>.seed<k>``; the table then gives mean ± standard error over the seeds.

With ``--prior 1e`` / ``--prior minao`` (repeatable, with ``none``; the correction in the
Löwdin basis, or ``minao-ao`` for the AO basis) every variant is also trained on top of that prior
Hamiltonian (:mod:`deqh_core.solvers.prior`), as run ``<variant>+<prior>``.

With several backbones (``backbones=["qhnet", "sphnet"]``, ``deqh ablate --backbone qhnet
--backbone sphnet``) every backbone's runs go to ``out/<backbone>/`` (its own settings file) and
one table and chart at ``out/`` hold them all, labelled by backbone (``DEQ sphnet``, ``sphnet w/
S``, ...; QHNet's keep the paper's names). A CPU preset sizes each backbone with its own
hyperparameters (``BackboneSpec.presets``).

Layout of ``--out`` (default ``runs/ablation``)::

    ablation.json     the settings the ablation was started with (a rerun must match them)
    <variant>/        a ``deqh train`` run directory (checkpoints, metrics.csv, config.yaml)
    <variant>+<prior>/  the same variant with a prior
    <run>.seed<k>/    the same run with seed run.seed + k
    <variant>/eval.json   the variant's evaluation; its presence marks the variant done
    ablation.md       Markdown table of every finished run in the folder (per variant and prior:
                      mean ± standard error over seeds; training step time; validation H MAE at
                      the wall-clock time of the quickest variant)
    ablation.png      bar chart of H MAE, occupied-orbital-energy MAE and ψ similarity
    ablation_time.png validation H MAE against training wall-clock time, every run

Resumable variant by variant: a finished variant (``eval.json``) is skipped, a killed one
resumes from its ``last.pt`` through the trainer's resume. A wall-time budget (``minutes``)
counts the time a killed variant had trained up to its last checkpoint, so resuming does not
give it extra time.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deqh_core.util.errors import DeqhError
from deqh_core.util.files import atomic_open, atomic_write, check_output_dir

if TYPE_CHECKING:
    from deqh_core.inference.evaluate import EvaluationResult
    from deqh_core.training.config import TrainConfig


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the paper's name (with the QHNet backbone)
    deq: bool
    overlap: bool
    feedback: str = "diagonal"  # deq.feedback

    def label_for(self, backbone: str | None) -> str:
        """The name of this variant of ``backbone``: the paper's for QHNet (or no backbone
        given), else e.g. ``DEQ sphnet``, ``sphnet w/ S``, ``DEQ sphnet full``."""
        if backbone in (None, "qhnet"):
            return self.label
        name = f"DEQ {backbone}" if self.deq else backbone
        if self.overlap != self.deq:
            name += " w/ S" if self.overlap else " w/o S"
        return name + (" full" if self.feedback == "full" else "")


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("deqhnet", "DEQHNet", deq=True, overlap=True),
        Variant("deqhnet-no-s", "DEQHNet w/o S", deq=True, overlap=False),
        Variant("qhnet", "QHNet", deq=False, overlap=False),
        Variant("qhnet-s", "QHNet w/ S", deq=False, overlap=True),
        Variant("deqhnet-full", "DEQHNet full", deq=True, overlap=True, feedback="full"),
    )
}
PAPER_VARIANTS = ("deqhnet", "deqhnet-no-s", "qhnet", "qhnet-s")  # the default: paper Fig. 5


class AblationError(DeqhError):
    """An ablation directory that does not match the settings of this call, and the like."""


def base_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[dict] | tuple[dict, ...] = (),
    backbone: str = "qhnet",
    steps: int | None = None,
    minutes: float | None = None,
) -> TrainConfig:
    """The settings every variant shares: preset, then file, then overrides, then the flags."""
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.training.config import load_config

    flags: dict[str, Any] = {"model": {"backbone": backbone}}
    if steps is not None:
        flags["optim"] = {"max_steps": steps}
    if minutes is not None:
        flags["run"] = {"max_minutes": minutes}
    return load_config(preset, config_file, *overrides, flags)


# a prior and the basis of its correction (deqh_core.solvers.prior): "minao" (the Lowdin
# basis, the default of model.prior_basis) or "minao-ao" (AO basis)
PRIOR_CHOICES = ("none", "1e", "minao", "1e-ao", "minao-ao")


def run_name(variant: str, prior: str = "none", seed: int = 0, backbone: str | None = None) -> str:
    """The run directory name of ``variant`` with ``prior`` (one of :data:`PRIOR_CHOICES`) and
    the ``seed``-th extra seed: ``qhnet``, ``qhnet+minao``, ``qhnet+minao-ao``,
    ``qhnet+minao.seed2``; in a study of several backbones under the backbone's folder
    (``sphnet/qhnet+minao``)."""
    name = variant if prior == "none" else f"{variant}+{prior}"
    name = f"{name}.seed{seed}" if seed else name
    return f"{backbone}/{name}" if backbone else name


def split_name(name: str) -> tuple[Variant, str, int]:
    """Inverse of :func:`run_name`: the variant, the prior and the seed index."""
    name = name.rpartition("/")[2]
    name, _, seed = name.partition(".seed")
    variant, _, prior = name.partition("+")
    return VARIANTS[variant], prior or "none", int(seed or 0)


def backbone_of(name: str) -> str | None:
    """The backbone folder of a run name of a several-backbone study, else None."""
    return name.rpartition("/")[0] or None


def variant_config(
    base: TrainConfig, variant: str, out: str | Path, prior: str = "none", seed: int = 0
) -> TrainConfig:
    """``base`` as ``variant`` with ``prior`` and seed ``run.seed + seed``, training into
    ``out/<run name>`` (``out`` is the backbone's folder in a several-backbone study)."""
    v = VARIANTS[variant]
    kind, _, basis = prior.partition("-")
    basis = basis or ("ao" if kind == "none" else "lowdin")  # as model.prior_basis defaults
    update = {"deq": v.deq, "overlap": v.overlap, "prior": kind, "prior_basis": basis}
    model = base.model.model_copy(update=update)
    deq = base.deq.model_copy(update={"feedback": v.feedback})
    run = base.run.model_copy(
        update={"out": Path(out) / run_name(variant, prior, seed), "seed": base.run.seed + seed}
    )
    return base.model_copy(update={"model": model, "deq": deq, "run": run})


# ----------------------------------------------------------------------------------------------
# the settings file


def _settings(base: TrainConfig, split: str) -> dict:
    values = base.model_dump(mode="json")
    for key in ("out", "progress", "device"):  # may change between sessions
        values["run"].pop(key, None)
    return {"config": values, "split": split}


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if old == new else [f"{where}: {old!r} then, {new!r} now"]


def _check_settings(out: Path, settings: dict) -> None:
    """Bind ``out`` to ``settings`` once a variant has checkpoints; refuse other settings."""
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.training.config import TrainConfig, upgrade_config

    path = out / "ablation.json"
    started = any(_is_run(p.parent.name) for p in out.glob("*/last.pt"))
    if path.exists() and started:
        try:
            saved = json.loads(path.read_text())
            # through today's config: a field added since then takes its default
            saved = _settings(
                TrainConfig.model_validate(upgrade_config(saved["config"])), saved["split"]
            )
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise AblationError(f"{path}: unreadable ({err})") from None
        diff = _differences(saved, settings)
        if diff:
            raise AblationError(
                f"{out} holds an ablation started with other settings ({'; '.join(diff[:3])}); "
                "rerun with the same options to resume it, or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(settings, indent=2) + "\n")  # nothing trained yet: (re)write


def _is_run(name: str) -> bool:
    try:
        split_name(name)
    except (KeyError, ValueError):
        return False
    return name.count("/") <= 1


def _check_data(base: TrainConfig, split: str) -> None:
    """Before anything is written or trained: refuse an evaluation split the run's data and
    split leave empty (the split is made as the trainer makes it: from atom counts and ids,
    cheap), and records the study will read that do not fit (byte counts only)."""
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
    from deqh_core.training.trainer import make_split

    path = base.data.path or BUNDLED
    if not Path(path).is_file():
        return  # the trainer names the missing file
    dataset = HamiltonianDataset(path, basis=base.data.basis)
    parts = make_split(dataset, base.data)
    dataset.check_sizes(None if split == "all" else parts.train + parts.val + getattr(parts, split))
    if split != "all" and not getattr(parts, split):
        sizes = "/".join(str(len(getattr(parts, k))) for k in ("train", "val", "test"))
        raise AblationError(
            f"{path} with data.split={base.data.split!r} leaves the {split} split empty "
            f"(train/val/test {sizes}): the variants could not be evaluated on it; choose "
            "another --split"
        )


# ----------------------------------------------------------------------------------------------
# running


def _remaining_minutes(run_dir: Path, minutes: float) -> float:
    """Wall-time budget left for a variant, and start the clock of this session.

    ``budget.json`` holds the minutes spent by earlier sessions and when the current one
    started; a session killed after its last checkpoint is charged up to that checkpoint.
    """
    path = run_dir / "budget.json"
    last = run_dir / "last.pt"
    spent = 0.0
    if path.exists() and last.exists():
        saved = json.loads(path.read_text())
        spent = saved["spent_minutes"] + max(0.0, last.stat().st_mtime - saved["started"]) / 60
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"spent_minutes": spent, "started": time.time()}) + "\n")
    return minutes - spent


def run_variant(
    base: TrainConfig,
    variant: str,
    out: str | Path,
    split: str = "test",
    log=print,
    prior: str = "none",
    seed: int = 0,
) -> EvaluationResult:
    """Train (or resume, or skip when done) one variant, then evaluate its ``best.pt``."""
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.inference.evaluate import evaluate_checkpoint
    from deqh_core.training.trainer import Trainer

    cfg = variant_config(base, variant, out, prior, seed)
    variant = run_name(variant, prior, seed)
    run_dir = Path(cfg.run.out)
    done = run_dir / "eval.json"
    if done.exists():
        log(f"{variant}: done, skipped ({done})")
        return _load_result(done)
    resume = (run_dir / "last.pt").exists()
    train, model = True, None
    if base.run.max_minutes is not None:
        left = _remaining_minutes(run_dir, base.run.max_minutes)
        if left <= 0 and resume:
            train = False
        else:
            run = cfg.run.model_copy(update={"max_minutes": max(left, 1e-3)})
            cfg = cfg.model_copy(update={"run": run})
    if train:
        log(f"{variant}: {'resuming' if resume else 'training'} in {run_dir}")
        trainer = Trainer(cfg)
        trainer.fit(resume=resume)
        model = trainer.model  # reused for the evaluation: building a backbone can be slow
    device = cfg.run.device
    result = evaluate_checkpoint(run_dir / "best.pt", split=split, device=device, model=model)
    result.extra["variant"] = variant
    result.write_json(done)
    return result


def _load_result(path: Path) -> EvaluationResult:
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.inference.evaluate import EvaluationResult

    saved = json.loads(path.read_text())
    metrics = {k: float("nan") if v is None else v for k, v in saved["metrics"].items()}
    return EvaluationResult(
        summary=metrics,
        molecules=[],
        checkpoint=saved["checkpoint"],
        data=saved["data"],
        weights=saved["weights"],
        step=saved["step"],
        model=saved["model"],
        extra={"variant": saved.get("variant")},
    )


def finished(out: str | Path) -> dict[str, EvaluationResult]:
    """Every run of ``out`` that has its ``eval.json``, by run name: priors in
    :data:`PRIOR_CHOICES` order, then variants in :data:`VARIANTS` order, then seeds."""
    out = Path(out)
    found = [*out.glob("*/eval.json"), *out.glob("*/*/eval.json")]
    names = [p.parent.relative_to(out).as_posix() for p in found]
    names = [n for n in names if _is_run(n)]
    backbones = list(dict.fromkeys(backbone_of(n) for n in sorted(names)))

    def order(name: str) -> tuple[int, int, int, int]:
        v, prior, seed = split_name(name)
        first = backbones.index(backbone_of(name))
        return first, PRIOR_CHOICES.index(prior), list(VARIANTS).index(v.name), seed

    return {name: _load_result(out / name / "eval.json") for name in sorted(names, key=order)}


@dataclass
class AblationResult:
    results: dict[str, EvaluationResult]  # every finished run in ``out`` (:func:`finished`)
    markdown: Path
    chart: Path
    rows: list[list[str]]  # the table (:func:`table_rows`)


def run_ablation(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[dict] | tuple[dict, ...] = (),
    backbone: str | list[str] = "qhnet",
    steps: int | None = None,
    minutes: float | None = None,
    out: str | Path = "runs/ablation",
    variants: list[str] | None = None,
    split: str = "test",
    log=print,
    priors: list[str] | None = None,
    seeds: int = 1,
) -> AblationResult:
    """Train and evaluate the variants (the paper's four by default) of each ``backbone`` (one
    name or several), each with every prior (default: none) and ``seeds`` seeds, and write the
    table and charts.

    Every run gets the same config except ``model.deq`` / ``model.overlap`` / ``model.prior``
    (and the backbone with its preset size): the same data and split, seed, optimiser and budget
    (``steps`` optimiser steps and/or ``minutes`` of wall time, whichever ends first).
    Evaluation is on the recorded ``split`` of each run, on the config's ``run.device``; ``log``
    receives one line per run.
    """
    names = list(variants or PAPER_VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise AblationError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    priors = list(dict.fromkeys(priors or ["none"]))
    if bad := [p for p in priors if p not in PRIOR_CHOICES]:
        raise AblationError(f"unknown prior(s) {bad}; known: {', '.join(PRIOR_CHOICES)}")
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.plugins.manager import get_backbone
    from deqh_core.util.device import resolve_device

    if seeds < 1:
        raise AblationError(f"seeds must be >= 1, got {seeds}")
    out = Path(out)
    chosen = [backbone] if isinstance(backbone, str) else list(dict.fromkeys(backbone))
    if not chosen:
        raise AblationError("no backbone given")
    bases = {b: base_config(preset, config_file, overrides, b, steps, minutes) for b in chosen}
    folders = {b: out / b if len(chosen) > 1 else out for b in chosen}
    full = [n for n in names if VARIANTS[n].feedback == "full"]
    for base in bases.values():  # an unknown backbone fails before anything is written, and
        spec = get_backbone(base.model.backbone)  # so does a variant it cannot run
        if full and not spec.capabilities.reads_pairs:
            raise AblationError(
                f"backbone {spec.name!r} cannot read pair features: variant(s) "
                f"{', '.join(full)} need deq.feedback = full"
            )
    first = bases[chosen[0]]
    resolve_device(first.run.device)  # and so does a device this machine does not have
    check_output_dir(out)
    _check_data(first, split)
    for b, base in bases.items():
        _check_settings(folders[b], _settings(base, split))
    for seed in range(seeds):
        for prior in priors:
            for b, base in bases.items():
                for name in VARIANTS:
                    if name in names:
                        run_variant(base, name, folders[b], split, log, prior, seed)
    results = finished(out)  # the table holds every finished run, of this call or earlier ones
    rows = table_rows(results, out)
    markdown = write_markdown(results, rows, first, out)
    chart = write_chart(results, first, out / "ablation.png")
    write_time_chart(results, first, out)
    return AblationResult(results, markdown, chart, rows)


# ----------------------------------------------------------------------------------------------
# reporting


@dataclass(frozen=True)
class Curve:
    """A run's validation H MAE against training wall-clock time, from its ``metrics.csv``.

    Attributes:
        minutes: ``[n_val]`` training wall time at each validation (min, across resumes).
        mae: ``[n_val]`` validation H MAE (Hartree).
        step_seconds: median time of one training step (s), validations excluded where the
            log allows (``run.log_every`` below ``run.val_every``).
    """

    minutes: np.ndarray
    mae: np.ndarray
    step_seconds: float

    def best_until(self, minutes: float) -> float:
        """The lowest validation H MAE reached within ``minutes`` (nan if none)."""
        within = self.mae[self.minutes <= minutes * (1 + 1e-9)]
        return float(within.min()) if len(within) else float("nan")


def training_curve(run_dir: str | Path) -> Curve:
    """The :class:`Curve` of a ``deqh train`` run directory."""
    with (Path(run_dir) / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = [(float(r["time"]), float(r["mae_all"])) for r in rows if r["split"] == "val"]
    val_steps = {int(r["step"]) for r in rows if r["split"] == "val"}
    train = [(int(r["step"]), float(r["time"])) for r in rows if r["split"] == "train"]
    if len(train) < 2:  # too few training rows logged: time between validations instead
        train = [(int(r["step"]), float(r["time"])) for r in rows]
    spans = [(s1, s2, t2 - t1) for (s1, t1), (s2, t2) in pairwise(train) if s2 > s1]
    clean = [(s1, s2, dt) for s1, s2, dt in spans if not any(s1 < v <= s2 for v in val_steps)]
    per_step = [dt / (s2 - s1) for s1, s2, dt in clean or spans]
    times, maes = (np.array(x, dtype=float) for x in zip(*val)) if val else (np.zeros(0),) * 2
    return Curve(times / 60, maes, float(np.median(per_step)) if per_step else float("nan"))


@dataclass(frozen=True)
class Group:
    """The runs of one variant with one prior (one per seed)."""

    variant: Variant
    prior: str
    names: list[str]
    backbone: str | None = None  # in a several-backbone study

    @property
    def name(self) -> str:
        """The variant's name with its backbone (:meth:`Variant.label_for`)."""
        return self.variant.label_for(self.backbone)

    @property
    def label(self) -> str:
        return self.name if self.prior == "none" else f"{self.name} + {self.prior}"


def grouped(results: dict[str, EvaluationResult]) -> list[Group]:
    """The runs of ``results`` grouped by backbone, variant and prior, in their order."""
    groups: dict[tuple[str | None, str, str], list[str]] = {}
    for name in results:
        v, prior, _ = split_name(name)
        groups.setdefault((backbone_of(name), v.name, prior), []).append(name)
    return [Group(VARIANTS[v], prior, names, b) for (b, v, prior), names in groups.items()]


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``; nan for one value)."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    if not len(x):
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def _stat(values, scale: float = 1.0, digits: int = 2) -> str:
    mean, se = mean_se([v * scale for v in values])
    if mean != mean:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se == se else "")


def table_rows(results: dict[str, EvaluationResult], out: str | Path) -> list[list[str]]:
    """Rows of the ablation table, one per variant and prior: mean ± standard error over its
    seeds (energies in 1e-6 Hartree, ψ in percent, step time in seconds); the last column is
    the validation H MAE each reached within the training wall time of the quickest group."""
    out = Path(out)
    curves = {name: training_curve(out / name) for name in results}
    groups = grouped(results)

    def total(name: str) -> float:
        return float(curves[name].minutes.max()) if len(curves[name].minutes) else float("nan")

    common = min((mean_se(total(n) for n in g.names)[0] for g in groups), default=float("nan"))
    rows = []
    for g in groups:
        m = [results[n].summary for n in g.names]

        def col(key: str, scale: float = 1e6, digits: int = 2, m=m) -> str:
            return _stat([x[key] for x in m if key in x], scale, digits)

        rows.append(
            [
                g.name,
                "yes" if g.variant.deq else "no",
                "yes" if g.variant.overlap else "no",
                g.variant.feedback if g.variant.deq else "-",
                g.prior,
                str(len(g.names)),
                _stat([results[n].step for n in g.names], 1, 0),
                col("h_mae_all"),
                col("h_mae_diag"),
                col("h_mae_off"),
                col("eps_occ_mae"),
                col("homo_mae"),
                col("lumo_mae"),
                col("psi_cos", 100),
                col("deq_nstep", 1, 1),
                col("deq_converged", 100, 0),
                _stat([curves[n].step_seconds for n in g.names], 1, 3),
                _stat([curves[n].best_until(common) for n in g.names], 1e6),
            ]
        )
    return rows


HEADER = [
    "variant",
    "DEQ",
    "S",
    "feedback",
    "prior",
    "seeds",
    "steps",
    "H MAE [1e-6 Ha]",
    "diag",
    "off-diag",
    "ε occ MAE [1e-6 Ha]",
    "HOMO",
    "LUMO",
    "ψ [%]",
    "DEQ nstep",
    "DEQ converged [%]",
    "step [s]",
    "val H MAE at equal time [1e-6 Ha]",
]
LEFT = 5  # columns that name the run


def write_markdown(
    results: dict[str, EvaluationResult], rows: list[list[str]], base: TrainConfig, out: Path
) -> Path:
    """``out/ablation.md``: the settings and the table ``rows`` (:func:`table_rows`)."""
    first = next(iter(results.values()), None)
    lines = [
        f"# Ablation: backbone {_backbones(results, base, '`')}",
        "",
        f"Data: {first.data if first else '-'} ({first.summary['n_molecules'] if first else 0} "
        "molecules); per-molecule MAEs averaged over molecules (QH9); ψ: mean |cosine| of "
        "occupied orbital coefficients; mean ± standard error over the seeds. Step: median "
        "wall time of a training step (validations excluded); the last column is each run's "
        "best validation H MAE within the training wall time of the quickest variant. Budget: "
        + ", ".join(
            part
            for part in (
                f"{base.optim.max_steps} steps",
                f"{base.run.max_minutes:g} min" if base.run.max_minutes else "",
            )
            if part
        )
        + " per run.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < LEFT else "---:" for i in range(len(HEADER))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return atomic_write(out / "ablation.md", "\n".join(lines) + "\n")


def _backbones(results: dict[str, EvaluationResult], base: TrainConfig, quote: str = "") -> str:
    """The backbones of the runs in ``results`` (``base``'s for a one-backbone study), each
    between ``quote`` marks (Markdown code: a backtick)."""
    names = [b for b in dict.fromkeys(backbone_of(n) for n in results) if b]
    return ", ".join(f"{quote}{b}{quote}" for b in names or [base.model.backbone])


def _label(name: str) -> str:
    variant, prior, _ = split_name(name)
    label = variant.label_for(backbone_of(name))
    return label if prior == "none" else f"{label} + {prior}"


PALETTE = {
    "deqhnet": "#1f77b4",
    "deqhnet-no-s": "#aec7e8",
    "qhnet": "#ff7f0e",
    "qhnet-s": "#ffbb78",
    "deqhnet-full": "#2ca02c",
}
# a second backbone's variants (a several-backbone study): the same hues, other shades
PALETTE_OTHER = {
    "deqhnet": "#17becf",
    "deqhnet-no-s": "#9edae5",
    "qhnet": "#d62728",
    "qhnet-s": "#ff9896",
    "deqhnet-full": "#98df8a",
}


def _color(name: str, results) -> str:
    """A run's colour: its variant's, in the other shades for any backbone but the first."""
    first = backbone_of(next(iter(results)))
    palette = PALETTE if backbone_of(name) == first else PALETTE_OTHER
    return palette.get(split_name(name)[0].name, "#7f7f7f")


def write_time_chart(results: dict[str, EvaluationResult], base: TrainConfig, out: Path) -> Path:
    """Validation H MAE (1e-6 Ha, log scale) against training wall-clock time (min), one line
    per run, one colour per variant, dashed with a prior."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for g in grouped(results):
        for k, name in enumerate(g.names):
            curve = training_curve(out / name)
            ax.plot(
                curve.minutes,
                curve.mae * 1e6,
                color=_color(name, results),
                linestyle="-" if g.prior == "none" else "--",
                linewidth=1.2,
                label=g.label if k == 0 else None,
            )
    ax.set_yscale("log")
    ax.set_xlabel("training wall-clock time [min]")
    ax.set_ylabel("validation H MAE [$10^{-6}$ Ha]")
    ax.set_title(f"Ablation ({_backbones(results, base)}): error against time")
    if results:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "ablation_time.png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path


def write_chart(results: dict[str, EvaluationResult], base: TrainConfig, path: Path) -> Path:
    """Fig. 5 analogue: bars of H MAE, ε MAE (1e-6 Ha) and ψ similarity (%) per variant."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    labels = [_label(n) for n in results]
    panels = (
        ("H MAE [$10^{-6}$ Ha]", [r.summary["h_mae_all"] * 1e6 for r in results.values()]),
        ("ε MAE [$10^{-6}$ Ha]", [r.summary["eps_occ_mae"] * 1e6 for r in results.values()]),
        ("ψ similarity [%]", [r.summary["psi_cos"] * 100 for r in results.values()]),
    )
    colors = [_color(n, results) for n in results]
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    for ax, (title, values) in zip(axes, panels):
        bars = ax.bar(range(len(values)), values, color=colors)
        ax.bar_label(bars, fmt="%.4g", fontsize=8)
        ax.set_title(title)
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right")
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        if not values:
            continue
        low, high = min(values), max(values)
        if title.startswith("ψ"):  # similarities sit near 100 %: zoom in on their spread
            span = max(high - low, 0.05)
            ax.set_ylim(max(0.0, low - 2 * span), high + 0.3 * span)
        else:
            ax.set_ylim(0, high * 1.15 if high > 0 else 1)
    fig.suptitle(f"Ablation ({_backbones(results, base)})")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return Path(path)
