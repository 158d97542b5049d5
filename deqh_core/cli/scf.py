"""``deqh scf``: SCF warm starts from predictions and the cycles saved (logic:
:mod:`deqh_core.inference.scf`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from deqh_core.cli.options import KeepGoingOption, ModelArgument, ProgressOption, RecipeOption
from deqh_core.inference.pretrained import run_folder
from deqh_core.util.errors import DataError, DeqhError


def register(app: typer.Typer) -> None:
    app.command("scf")(scf_command)


def scf_command(
    checkpoint: ModelArgument,
    xyz: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[MOLECULE.xyz]...",
            help="Molecules without labels (every frame of each file); default: a dataset.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset file (default: the run's own).", exists=True, dir_okay=False),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="train, val, test or all (default: test; all for another --data)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use the first N molecules.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes, one molecule each.")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: <run>/scf).", file_okay=False)
    ] = None,
    guess: Annotated[
        list[str] | None,
        typer.Option(help="PySCF guess to compare with (repeatable; default minao, sap, huckel)."),
    ] = None,
    recipe_items: RecipeOption = None,
    xc: Annotated[str | None, typer.Option(help="Override the recipe's functional.")] = None,
    basis: Annotated[
        str | None, typer.Option(help="Basis of the recipe (must be the model's).")
    ] = None,
    grid_level: Annotated[
        int | None, typer.Option(help="Override the recipe's DFT grid level.")
    ] = None,
    max_cycle: Annotated[
        int | None, typer.Option(min=1, help="Override the recipe's SCF cycle limit.")
    ] = None,
    keep_going: KeepGoingOption = False,
    fresh_guesses: Annotated[
        bool,
        typer.Option(
            "--fresh-guesses",
            help="Rerun the guess-started SCFs instead of reusing earlier ones (they do not "
            "depend on the model; kept in the cache folder when the labels are the reference).",
        ),
    ] = False,
    h0: Annotated[
        str,
        typer.Option(
            help="How a prior model's H0 is built: fast (density-fitted J/K, coarse grid) or "
            "exact (as in training, with the SCF's own grid and integrals)."
        ),
    ] = "fast",
    device: Annotated[str, typer.Option(help="Device of the model.")] = "cpu",
    progress: ProgressOption = True,
) -> None:
    """Start PySCF's SCF from predicted Hamiltonians and report the cycles saved (Table 3).

    For each molecule, on one thread: SCF from the model (H0, model and SCF timed together;
    --h0 says how H0 is built), from PySCF's minao, sap and huckel
    guesses (--guess); optimal / achieved / error-level ratios, total wall time and time
    saved, energy agreement and the prediction's commutator error. Writes scf.csv,
    scf_summary.json and scf_table.md.
    The recipe is the labels' recipe recorded in the checkpoint (printed; --recipe, --xc, ...
    override it). A DEQ model's unconverged molecules make the command exit 1 after writing
    everything, unless --keep-going.
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.console import Console

    from deqh_core.data.recipe import describe_recipe, labels_recipe
    from deqh_core.inference.guess import H0_MODES, GuessInfo, ModelGuess
    from deqh_core.inference.loaded import load_model, select_records
    from deqh_core.inference.predict import occupied_counts, read_inputs
    from deqh_core.inference.scf import GUESSES, SCFTask, run_acceleration, write_report

    if h0 not in H0_MODES:
        raise DataError(f"--h0 {h0!r}: use {' or '.join(H0_MODES)}")
    guesses = tuple(guess or GUESSES)
    for g in guesses:
        if g not in ("minao", "1e", "atom", "huckel", "sap", "vsap"):
            raise DataError(f"--guess {g!r}: use minao, 1e, atom, huckel, sap or vsap")
    if split not in (None, "train", "val", "test", "all"):
        raise DataError(f"--split {split!r}: use train, val, test or all")
    if xyz and data is not None:
        raise DataError("give either molecule .xyz files or --data, not both")
    loaded = load_model(checkpoint, device=device)
    loaded.report_deq_failures()  # a broken molecule is flagged as unconverged
    if basis is not None and basis.lower() != loaded.layout.basis.lower():
        raise DataError(f"--basis {basis!r}: the model predicts in {loaded.layout.basis!r}")
    recipe, source = loaded.recipe(
        recipe_items or (), xc=xc, grid_level=grid_level, max_cycle=max_cycle
    )
    console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
    console.print(f"recipe: {describe_recipe(recipe)} (from {source})")
    if loaded.h0_kind is not None:
        console.print(f"model start: the {loaded.h0_kind} prior's H0 built {h0} (--h0)")
    molecules: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
    outside: dict[str, list[str]] = {}
    if xyz:
        domain = loaded.domain
        elements = domain.elements if domain else None
        frames = read_inputs(list(xyz), loaded.layout, elements, close_ok=keep_going)
        occupied_counts(frames[:limit], loaded.layout, recipe)  # closed shell, or named
        for path, k, fr in frames[:limit]:
            name = f"{path.name}#{k}"
            molecules.append((name, fr.atomic_numbers, fr.positions, None))
            if domain is not None:
                outside[name] = domain.check(fr.atomic_numbers, fr.positions, recipe.charge)
        console.print(f"{len(molecules)} molecule(s) from xyz; reference: SCF from the prediction")
    else:
        dataset, records, note = select_records(loaded, data, split, limit)
        labels = labels_recipe(dataset.recipe, loaded.layout.basis)[0]
        # the labels are the reference when the recipe run makes the same Fock matrix
        # (SCF limits such as --max-cycle do not change it)
        physics = ("xc", "basis", "grid_level", "charge", "spin")
        same = all(getattr(labels, k) == getattr(recipe, k) for k in physics)
        for r in records:
            label = r.hamiltonian if same else None
            molecules.append((f"{r.id}:{r.source or ''}", r.atomic_numbers, r.positions, label))
        console.print(note)
        if not same:
            console.print(
                f"the labels' recipe ({describe_recipe(labels)}) is not the one run: labels do "
                "not apply; reference: SCF from the prediction"
            )
    if molecules:  # a warm-up pass, so that the first molecule's time is not the model's setup
        loaded.predict(_item(loaded, recipe, molecules[0]))
    # the model predicts inside each timed prediction-started run, given that run's own
    # mean-field object, as deqh_core.pyscf.init_guess does: H0, model and SCF on one clock
    model_guess = ModelGuess(loaded, recipe, h0=h0)
    made: dict[str, GuessInfo] = {}
    tasks = [
        SCFTask(name, z, pos, label=label, start=_start(model_guess, name, made))
        for name, z, pos, label in molecules
    ]
    if not tasks:
        raise DataError("no molecules to run")
    console.print(f"guesses: {', '.join(guesses)}; {workers} worker(s)")
    results = run_acceleration(
        tasks, recipe, guesses, workers=workers, progress=progress, guess_cache=not fresh_guesses
    )
    out = out or run_folder(checkpoint) / "scf"
    paths = write_report(results, out, loaded.name)
    Console(highlight=False, markup=False).print(paths["md"].read_text())
    Console(highlight=False, markup=False).print(
        f"wrote {paths['csv']}, {paths['json']}, {paths['md']}"
    )
    for name, found in outside.items():
        for warning in found:
            console.print(f"warning: {name}: {warning}", style="yellow")
    unconverged = [
        (name, info.deq_residual) for name, info in made.items() if info.deq_converged is False
    ]
    for name, residual in unconverged:
        console.print(
            f"UNCONVERGED: {name}: DEQ residual {residual:.2e} Ha above the tolerance", style="red"
        )
    if unconverged and not keep_going:
        raise DeqhError(
            f"{len(unconverged)} of {len(tasks)} molecule(s) did not converge (results written); "
            "pass --keep-going to accept them"
        )


def _item(loaded, recipe, molecule: tuple) -> Any:
    name, z, pos, _ = molecule
    try:
        return loaded.item(z, pos, recipe)
    except DeqhError as err:
        raise type(err)(f"{name}: {err}") from None


def _start(model_guess, name: str, made: dict):
    """The task's ``start``: the model's H with the run's ``mf``; keeps its GuessInfo in
    ``made`` (domain warnings are reported once, by the command)."""

    def start(mf):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                h, info = model_guess.hamiltonian(mf)
            except DeqhError as err:
                raise type(err)(f"{name}: {err}") from None
        made[name] = info
        return h, info.model_seconds, info.prior_seconds

    return start
