"""``deqh train``: train a backbone as predictor or DEQ solver.

Logic: :mod:`deqh_core.training.trainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deqh_core.cli.options import stderr


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    backbone: Annotated[
        str | None, typer.Option(help="Registered backbone (deqh backbones).")
    ] = None,
    deq: Annotated[
        bool | None, typer.Option("--deq/--no-deq", help="DEQ Hamiltonian solver (DEQHNet).")
    ] = None,
    overlap: Annotated[
        bool | None,
        typer.Option(
            "--overlap/--no-overlap", help="Feed S's diagonal reduction (default: = --deq)."
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(help="Learn the correction to PySCF's H0: none, 1e or minao (see docs)."),
    ] = None,
    prior_basis: Annotated[
        str | None,
        typer.Option(
            help="Basis of the prior's correction: lowdin (H0 + S^1/2 f S^1/2, the default; "
            "far better orbitals and SCF starts, docs/training.md) or ao (H0 + f)."
        ),
    ] = None,
    feedback: Annotated[
        str | None,
        typer.Option(
            metavar="diagonal|full",
            help="What of the DEQ's iterate the backbone reads: its on-site blocks (diagonal, "
            "the paper) or also its off-diagonal ones, as pair features (full).",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="cpu-small, md17-water, ..., qh9-stable-id (see docs).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML/TOML config file.", dir_okay=False)
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset file (default: bundled).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Molecules per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or float64.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights and batch order.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the resolved configuration as YAML and exit."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Any config field, e.g. optim.ema=true."),
    ] = None,
) -> None:
    """Train a backbone (as predictor, or with --deq as DEQ solver) on a Hamiltonian dataset."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    from deqh_core.training.config import PRESETS, load_config, parse_override
    from deqh_core.training.trainer import resumed_config, train
    from deqh_core.util.errors import ConfigError
    from deqh_core.util.files import read_settings

    flags: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is not None:
            flags.setdefault(section, {})[key] = value

    put("model", "backbone", backbone)
    put("model", "deq", deq)
    put("model", "overlap", overlap)
    put("model", "prior", prior)
    put("model", "prior_basis", prior_basis)
    put("deq", "feedback", feedback)
    put("data", "path", str(data) if data else None)
    put("data", "batch_size", batch_size)
    put("optim", "max_steps", steps)
    put("optim", "lr", lr)
    put("run", "device", device)
    put("run", "dtype", dtype)
    put("run", "seed", seed)
    put("run", "progress", progress)
    overrides = [parse_override(text) for text in set_ or []]
    if resume:
        # the run's own saved config, continued in --out (never where the checkpoint was
        # written first); requested changes are applied where sound, else refused
        run_dir = out or load_config(preset, config).run.out
        if any("out" in r.get("run", {}) for r in overrides):
            raise ConfigError("with --resume the run directory is --out; drop --set run.out")
        files = [dict(PRESETS[preset])] if preset in PRESETS else []
        files += [read_settings(config)] if config else []
        for f in files:  # the run directory is --out, not what the preset or file says
            f["run"] = {k: v for k, v in f.get("run", {}).items() if k != "out"}
        requested = [*files, *overrides, flags]
        cfg, notes = resumed_config(run_dir, requested)
        for note in notes:
            stderr.print(f"resume: {note}", markup=False)
    else:
        put("run", "out", str(out) if out else None)
        cfg = load_config(preset, config, *overrides, flags)
    if print_config:
        # imported when the command runs, so that `deqh --help` stays fast
        import yaml

        from deqh_core.training.config import resolved

        typer.echo(yaml.safe_dump(resolved(cfg), sort_keys=False), nl=False)
        return
    result = train(cfg, resume=resume)
    mode = (" --deq" + (" --feedback full" if cfg.deq.feedback == "full" else "")) * cfg.model.deq
    table = Table(title=f"deqh train: {cfg.model.backbone}{mode}")
    table.add_column("validation (step)")
    table.add_column("H MAE all, 1e-6 Ha")
    table.add_column("diag")
    table.add_column("off-diag")
    table.add_column("DEQ nfe")
    for name, m in (("last", result.last), ("best", result.best)):
        table.add_row(
            f"{name} ({m['step']})",
            f"{m['mae_all'] * 1e6:.1f}",
            f"{m['mae_diag'] * 1e6:.1f}",
            f"{m['mae_off'] * 1e6:.1f}",
            f"{m['deq_nfe']:.1f}" if "deq_nfe" in m else "-",
        )
    Console().print(table)
    if cfg.model.deq:
        unit = "Ha" if cfg.deq.f_stop_mode == "abs" else "(relative)"
        steps = {result.best["step"]: "best", result.last["step"]: "last"}  # last if the same
        for name, m in (("last", result.last), ("best", result.best)):
            if steps.get(m["step"]) != name or "deq_converged" not in m:
                continue  # best is last, or a checkpoint of an older deqh
            Console(highlight=False).print(
                f"DEQ solve of the {m['deq_molecules']} validation molecules at {name} "
                f"(step {m['step']}): {m['deq_converged'] * 100:.1f} % converged to "
                f"|f(H)-H| <= {cfg.deq.f_tol:g} {unit}; residual mean "
                f"{m['deq_residual_mean']:.1e}, worst {m['deq_residual']:.1e} Ha"
            )
    Console().print(f"{result.parameters:,} parameters; checkpoints in {result.out}/")
