"""``deqh analyze``: convergence and noise analyses of a trained model (paper Fig. 4, 6; logic:
:mod:`deqh_core.inference.analyze`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from deqh_core.cli.options import ModelArgument
from deqh_core.inference.pretrained import run_folder
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.files import check_output_dir


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")


analyze_app = typer.Typer(
    help="Convergence analyses of a trained model (paper Fig. 4 and 6).", no_args_is_help=True
)

_LEVELS = "1e-6,3e-6,1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2"


def _levels(text: str) -> list[float]:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--levels {text!r}: not a comma-separated list of numbers") from None
    if not levels or not all(np.isfinite(v) and v > 0 for v in levels):
        raise DataError(f"--levels {text!r}: noise levels are finite and positive (Hartree)")
    return levels


@analyze_app.command("convergence")
def convergence_command(
    checkpoint: ModelArgument,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset file (default: the run's own).", exists=True, dir_okay=False),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="train, val, test or all (default: test).")
    ] = None,
    molecule_id: Annotated[
        int | None, typer.Option("--molecule-id", help="Molecule for Fig. 4b/6 (default: first).")
    ] = None,
    iterations: Annotated[int, typer.Option(min=1, help="DEQ iterations to trace.")] = 15,
    nfe_checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--nfe-checkpoint",
            help="Checkpoints saved along the run to count DEQ iterations with (repeatable).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    nfe_molecules: Annotated[
        int, typer.Option(min=1, help="Molecules per --nfe-checkpoint (paper: 50).")
    ] = 10,
    noise: Annotated[bool, typer.Option(help="Also run the noise analysis (Fig. 6).")] = True,
    levels: Annotated[
        str, typer.Option(help="Noise std. devs., Hartree, comma-separated.")
    ] = _LEVELS,
    samples: Annotated[int, typer.Option(min=1, help="Noise draws per level.")] = 20,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: <run>/analysis).")
    ] = None,
) -> None:
    """Fig. 4b (H error per iteration: PySCF SCF, DEQ from identity, DEQ from minao), Fig. 4a
    (DEQ iterations per training step, from the run's metrics.csv) and Fig. 6 (orbital-energy
    error under Hamiltonian noise). PNG + CSV each."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console

    from deqh_core.inference.analyze import (
        checkpoint_nfe,
        convergence_traces,
        pick_record,
        plot_convergence,
        plot_training_nfe,
        trace_rows,
        training_nfe,
        write_rows,
    )
    from deqh_core.inference.loaded import load_model, select_records

    console = Console(highlight=False, markup=False)
    noise_levels = _levels(levels)
    loaded = load_model(checkpoint)
    loaded.report_deq_failures()
    run_dir = loaded.path.parent
    fig_4a = loaded.config.model.deq and (run_dir / "metrics.csv").is_file()
    along = [load_model(path) for path in nfe_checkpoint or []]  # all refused before any work
    for path, model in zip(nfe_checkpoint or [], along):
        if not model.config.model.deq:
            raise DeqhError(f"{path}: --nfe-checkpoint takes DEQ checkpoints; this is a predictor")
    if along and not fig_4a:
        raise DeqhError(
            f"--nfe-checkpoint: {run_dir} holds no metrics.csv of a DEQ run, so there is no "
            "Fig. 4a to add them to"
        )
    out = out or run_folder(checkpoint) / "analysis"
    check_output_dir(out)
    recipe = loaded.dataset_recipe(data)
    _, records, note = select_records(loaded, data, split, None)
    record = pick_record(records, molecule_id, note)
    name = f"molecule {record.id} ({record.source or '?'})"
    console.print(f"{note}; Fig. 4b/6 on {name}")

    traces = convergence_traces(loaded, record, recipe, iterations)
    write_rows(trace_rows(traces), out / "convergence.csv")
    png = plot_convergence(traces, out / "convergence.png", f"{loaded.name}, {name}")
    for method, trace in traces.items():
        console.print(f"  {method}: H MAE {trace[0]:.2e} -> {trace[-1]:.2e} Ha")
    console.print(f"wrote {png} and convergence.csv")

    if fig_4a:
        rows = training_nfe(run_dir)
        ckpt_rows = checkpoint_nfe(along, records[:nfe_molecules])
        write_rows(rows, out / "training_nfe.csv")
        if ckpt_rows:
            write_rows(ckpt_rows, out / "checkpoint_nfe.csv")
        png = plot_training_nfe(rows, out / "training_nfe.png", ckpt_rows, loaded.name)
        console.print(f"wrote {png} and training_nfe.csv")
    else:
        console.print("no metrics.csv of a DEQ run next to the checkpoint: Fig. 4a skipped")

    if noise:
        _noise(record, recipe, noise_levels, samples, out, name, console)


@analyze_app.command("noise")
def noise_command(
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset file (default: bundled).", exists=True, dir_okay=False),
    ] = None,
    molecule_id: Annotated[
        int | None, typer.Option("--molecule-id", help="Molecule (default: the first).")
    ] = None,
    levels: Annotated[
        str, typer.Option(help="Noise std. devs., Hartree, comma-separated.")
    ] = _LEVELS,
    samples: Annotated[int, typer.Option(min=1, help="Noise draws per level.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("analysis"),
) -> None:
    """Fig. 6 / A.10 without a model: orbital-energy error of a label plus Hermitian Gaussian
    noise, per noise level."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console

    from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
    from deqh_core.data.recipe import labels_recipe

    console = Console(highlight=False, markup=False)

    noise_levels = _levels(levels)
    check_output_dir(out)
    dataset = HamiltonianDataset(data or BUNDLED)
    ids = dataset.ids if molecule_id is None else [molecule_id]
    if molecule_id is not None and molecule_id not in dataset.ids:
        raise DataError(f"{dataset.path}: no molecule with id {molecule_id}")
    record = dataset.reader.get(ids[0])
    recipe, note = labels_recipe(dataset.recipe, dataset.layout.basis)
    if note:
        console.print(f"recipe: {note}")
    name = f"molecule {record.id} ({record.source or '?'})"
    _noise(
        record,
        recipe,
        noise_levels,
        samples,
        out,
        name,
        console,
        seed,
    )


def _noise(record, recipe, levels, samples, out, name, console, seed: int = 0) -> None:
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.inference.analyze import noise_analysis

    rows, png = noise_analysis(record, recipe, levels, samples, out, name, seed)
    for s in levels:
        occ = np.array([r["occ_mae"] for r in rows if r["sigma"] == s])
        console.print(
            f"  sigma {s:.0e} Ha: occupied eps MAE median {np.median(occ):.2e}, "
            f"range {occ.min():.2e}-{occ.max():.2e} Ha"
        )
    console.print(f"wrote {png} and noise.csv")
