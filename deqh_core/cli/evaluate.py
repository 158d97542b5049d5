"""``deqh evaluate``: a checkpoint's metrics on a split or another dataset (logic:
:mod:`deqh_core.inference.evaluate`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deqh_core.cli.options import DeviceOption, EmaOption, ModelArgument, ProgressOption, SplitName
from deqh_core.inference.pretrained import run_folder
from deqh_core.util.files import check_outputs


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)


def metrics_table(summary: dict[str, float], title: str):
    """A rich table of a summary in the paper's units (1e-6 Hartree, percent)."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")

    def micro(key: str) -> str:
        value = summary.get(key, float("nan"))
        return "-" if value != value else f"{value * 1e6:.2f}"

    table.add_row("molecules", str(summary["n_molecules"]), "")
    table.add_row("H MAE, all entries", micro("h_mae_all"), "1e-6 Ha")
    table.add_row("H MAE, diagonal blocks", micro("h_mae_diag"), "1e-6 Ha")
    table.add_row("H MAE, off-diagonal blocks", micro("h_mae_off"), "1e-6 Ha")
    table.add_row("H MAE, all (entry-weighted)", micro("h_mae_all_entries"), "1e-6 Ha")
    table.add_row("ε MAE, occupied orbitals", micro("eps_occ_mae"), "1e-6 Ha")
    table.add_row("HOMO MAE", micro("homo_mae"), "1e-6 Ha")
    table.add_row("LUMO MAE", micro("lumo_mae"), "1e-6 Ha")
    table.add_row("gap MAE", micro("gap_mae"), "1e-6 Ha")
    table.add_row("ψ cosine similarity, occupied", f"{summary['psi_cos'] * 100:.2f}", "%")
    if "deq_nfe" in summary:
        table.add_row("DEQ evaluations per batch", f"{summary['deq_nfe']:.1f}", "")
        table.add_row("DEQ nstep (mean)", f"{summary['deq_nstep']:.1f}", "")
        table.add_row("DEQ final residual (mean)", f"{summary['deq_residual_mean']:.2e}", "Ha")
        table.add_row("DEQ final residual (max)", f"{summary['deq_residual_max']:.2e}", "Ha")
        table.add_row("DEQ converged", f"{summary['deq_converged'] * 100:.0f}", "%")
    return table


def default_json_path(checkpoint: Path, data: Path | None, split: str | None) -> Path:
    tag = split or ("all" if data else "test")
    if data is not None:
        tag = f"{Path(data).stem}-{tag}"
    return run_folder(checkpoint) / f"eval-{checkpoint.stem}-{tag}.json"


def evaluate_command(
    checkpoint: ModelArgument,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate on this dataset file instead (all molecules, or --split's ids).",
            dir_okay=False,
        ),
    ] = None,
    split: Annotated[
        SplitName | None,
        typer.Option(help="Split recorded in the checkpoint (default: test; all with --data)."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Summary JSON (default: eval-<checkpoint>-<split>.json next to the checkpoint).",
            dir_okay=False,
        ),
    ] = None,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write per-molecule metrics here.", dir_okay=False),
    ] = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Molecules per batch (default: the run's).")
    ] = None,
    ema: EmaOption = None,
    progress: ProgressOption = True,
) -> None:
    """Evaluate a checkpoint: H MAE, orbital energies, HOMO/LUMO/gap, orbital similarity."""
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console

    from deqh_core.inference.evaluate import evaluate_checkpoint

    split_name = split.value if split is not None else None
    json_path = json_out or default_json_path(checkpoint, data, split_name)
    check_outputs(
        {"--json": json_path, "--csv": csv_out}, {"the checkpoint": checkpoint, "--data": data}
    )
    result = evaluate_checkpoint(
        checkpoint, data, split_name, device, batch_size, ema=ema, progress=progress
    )
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    title = f"deqh evaluate: {result.model['backbone']}{' --deq' if result.model['deq'] else ''}"
    title += f"{' +S' if result.model['overlap'] else ''} (step {result.step}, {result.weights})"
    console.print(metrics_table(result.summary, title))
    console.print(f"data: {result.data}", markup=False)
    result.write_json(json_path)
    console.print(f"summary written to {json_path}", markup=False)
    if csv_out is not None:
        result.write_csv(csv_out)
        console.print(f"per-molecule metrics written to {csv_out}", markup=False)
