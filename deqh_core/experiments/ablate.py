"""``deqh ablate``: the paper's ablation (Fig. 5) in one command.

Four variants of one backbone, trained on the same split with the same budget and evaluated on
the same molecules:

=================  ===========  ===========  ==========================================
variant            DEQ solver   reads S      the paper's name
=================  ===========  ===========  ==========================================
``deqhnet``        yes          yes          DEQHNet
``deqhnet-no-s``   yes          no           DEQHNet without the overlap matrix
``qhnet``          no           no           QHNet (the predictor)
``qhnet-s``        no           yes          QHNet with the overlap matrix
=================  ===========  ===========  ==========================================

With ``--prior 1e`` / ``--prior minao`` (repeatable, with ``none``; the correction in the
Löwdin basis, or ``minao-ao`` for the AO basis) every variant is also trained on top of that prior
Hamiltonian (:mod:`deqh_core.solvers.prior`), as run ``<variant>+<prior>``.

Layout of ``--out`` (default ``runs/ablation``)::

    ablation.json     the settings the ablation was started with (a rerun must match them)
    <variant>/        a ``deqh train`` run directory (checkpoints, metrics.csv, config.yaml)
    <variant>+<prior>/  the same variant with a prior
    <variant>/eval.json   the variant's evaluation; its presence marks the variant done
    ablation.md       Markdown table of every finished run in the folder
    ablation.png      bar chart of H MAE, occupied-orbital-energy MAE and ψ similarity

Resumable variant by variant: a finished variant (``eval.json``) is skipped, a killed one
resumes from its ``last.pt`` through the trainer's resume. A wall-time budget (``minutes``)
counts the time a killed variant had trained up to its last checkpoint, so resuming does not
give it extra time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("deqhnet", "DEQHNet", deq=True, overlap=True),
        Variant("deqhnet-no-s", "DEQHNet w/o S", deq=True, overlap=False),
        Variant("qhnet", "QHNet", deq=False, overlap=False),
        Variant("qhnet-s", "QHNet w/ S", deq=False, overlap=True),
    )
}


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


def run_name(variant: str, prior: str = "none") -> str:
    """The run directory name of ``variant`` with ``prior`` (one of :data:`PRIOR_CHOICES`):
    ``qhnet``, ``qhnet+minao``, ``qhnet+minao-ao``."""
    return variant if prior == "none" else f"{variant}+{prior}"


def split_name(name: str) -> tuple[Variant, str]:
    """Inverse of :func:`run_name`: the variant and the prior."""
    variant, _, prior = name.partition("+")
    return VARIANTS[variant], prior or "none"


def variant_config(
    base: TrainConfig, variant: str, out: str | Path, prior: str = "none"
) -> TrainConfig:
    """``base`` as ``variant`` with ``prior``, training into ``out/<run name>``."""
    v = VARIANTS[variant]
    kind, _, basis = prior.partition("-")
    basis = basis or ("ao" if kind == "none" else "lowdin")  # as model.prior_basis defaults
    update = {"deq": v.deq, "overlap": v.overlap, "prior": kind, "prior_basis": basis}
    model = base.model.model_copy(update=update)
    run = base.run.model_copy(update={"out": Path(out) / run_name(variant, prior)})
    return base.model_copy(update={"model": model, "run": run})


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
    started = any(p.parent.name.partition("+")[0] in VARIANTS for p in out.glob("*/last.pt"))
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
) -> EvaluationResult:
    """Train (or resume, or skip when done) one variant, then evaluate its ``best.pt``."""
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.inference.evaluate import evaluate_checkpoint
    from deqh_core.training.trainer import Trainer

    cfg = variant_config(base, variant, out, prior)
    variant = run_name(variant, prior)
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
    :data:`PRIOR_CHOICES` order, then variants in :data:`VARIANTS` order."""
    out = Path(out)
    return {
        run_name(v, p): _load_result(out / run_name(v, p) / "eval.json")
        for p in PRIOR_CHOICES
        for v in VARIANTS
        if (out / run_name(v, p) / "eval.json").exists()
    }


@dataclass
class AblationResult:
    results: dict[str, EvaluationResult]  # every finished run in ``out`` (:func:`finished`)
    markdown: Path
    chart: Path


def run_ablation(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[dict] | tuple[dict, ...] = (),
    backbone: str = "qhnet",
    steps: int | None = None,
    minutes: float | None = None,
    out: str | Path = "runs/ablation",
    variants: list[str] | None = None,
    split: str = "test",
    log=print,
    priors: list[str] | None = None,
) -> AblationResult:
    """Train and evaluate the variants (all four by default), each with every prior
    (default: none), and write the table and chart.

    Every run gets the same config except ``model.deq`` / ``model.overlap`` / ``model.prior``:
    the same data and split, seed, optimiser and budget (``steps`` optimiser steps and/or
    ``minutes`` of wall time, whichever ends first). Evaluation is on the recorded ``split`` of
    each run, on the config's ``run.device``; ``log`` receives one line per run.
    """
    names = list(variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise AblationError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    priors = list(dict.fromkeys(priors or ["none"]))
    if bad := [p for p in priors if p not in PRIOR_CHOICES]:
        raise AblationError(f"unknown prior(s) {bad}; known: {', '.join(PRIOR_CHOICES)}")
    # `deqh --help` imports this module (VARIANTS): torch and the trainer load when a study runs
    from deqh_core.plugins.manager import get_backbone
    from deqh_core.util.device import resolve_device

    out = Path(out)
    base = base_config(preset, config_file, overrides, backbone, steps, minutes)
    get_backbone(base.model.backbone)  # an unknown backbone fails before anything is written
    resolve_device(base.run.device)  # and so does a device this machine does not have
    check_output_dir(out)
    _check_data(base, split)
    _check_settings(out, _settings(base, split))
    for prior in priors:
        for name in VARIANTS:
            if name in names:
                run_variant(base, name, out, split, log, prior)
    results = finished(out)  # the table holds every finished run, of this call or earlier ones
    markdown = write_markdown(results, base, out / "ablation.md")
    chart = write_chart(results, base, out / "ablation.png")
    return AblationResult(results, markdown, chart)


# ----------------------------------------------------------------------------------------------
# reporting


def _micro(value: float) -> str:
    return "-" if value is None or value != value else f"{value * 1e6:.2f}"


def table_rows(results: dict[str, EvaluationResult]) -> list[list[str]]:
    """Rows of the ablation table (energies in 1e-6 Hartree, ψ in percent)."""
    rows = []
    for name, r in results.items():
        (v, prior), m = split_name(name), r.summary
        rows.append(
            [
                v.label,
                "yes" if v.deq else "no",
                "yes" if v.overlap else "no",
                prior,
                str(r.step),
                _micro(m["h_mae_all"]),
                _micro(m["h_mae_diag"]),
                _micro(m["h_mae_off"]),
                _micro(m["eps_occ_mae"]),
                _micro(m["homo_mae"]),
                _micro(m["lumo_mae"]),
                f"{m['psi_cos'] * 100:.2f}",
                f"{m['deq_nstep']:.1f}" if "deq_nstep" in m else "-",
                f"{m['deq_converged'] * 100:.0f}" if "deq_converged" in m else "-",
            ]
        )
    return rows


HEADER = [
    "variant",
    "DEQ",
    "S",
    "prior",
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
]


def write_markdown(results: dict[str, EvaluationResult], base: TrainConfig, path: Path) -> Path:
    first = next(iter(results.values()), None)
    lines = [
        f"# Ablation: backbone `{base.model.backbone}`",
        "",
        f"Data: {first.data if first else '-'} ({first.summary['n_molecules'] if first else 0} "
        "molecules); per-molecule MAEs averaged over molecules (QH9); ψ: mean |cosine| of "
        "occupied orbital coefficients. Budget: "
        + ", ".join(
            part
            for part in (
                f"{base.optim.max_steps} steps",
                f"{base.run.max_minutes:g} min" if base.run.max_minutes else "",
            )
            if part
        )
        + " per variant.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADER))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return atomic_write(path, "\n".join(lines) + "\n")


def _label(name: str) -> str:
    variant, prior = split_name(name)
    return variant.label if prior == "none" else f"{variant.label} + {prior}"


def write_chart(results: dict[str, EvaluationResult], base: TrainConfig, path: Path) -> Path:
    """Fig. 5 analogue: bars of H MAE, ε MAE (1e-6 Ha) and ψ similarity (%) per variant."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    labels = [_label(n) for n in results]
    panels = (
        ("H MAE [$10^{-6}$ Ha]", [r.summary["h_mae_all"] * 1e6 for r in results.values()]),
        ("ε MAE [$10^{-6}$ Ha]", [r.summary["eps_occ_mae"] * 1e6 for r in results.values()]),
        ("ψ similarity [%]", [r.summary["psi_cos"] * 100 for r in results.values()]),
    )
    palette = {"deqhnet": "#1f77b4", "deqhnet-no-s": "#aec7e8", "qhnet": "#ff7f0e"}
    colors = [palette.get(split_name(n)[0].name, "#ffbb78") for n in results]
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
    fig.suptitle(f"Ablation ({base.model.backbone})")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return Path(path)
