"""DFT acceleration (deqh scf) and convergence analyses (deqh analyze): QH9 ratios, energies,
the commutator check, and the commands on a tiny trained checkpoint."""

import itertools
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.recipe import Recipe
from deqh_core.inference.analyze import hermitian_noise, noise_orbital_errors, training_nfe
from deqh_core.inference.scf import (
    GUESSES,
    SCFTask,
    accelerate,
    commutator_error,
    density_from_hamiltonian,
    run_scf,
)
from deqh_core.training.config import load_config
from deqh_core.training.trainer import train

# Hartree-Fock needs no DFT grid: the cheapest recipe whose SCF still takes 8-11 cycles.
CHEAP = Recipe(xc="hf")
WATER_IDS = [0, 1, 2, 3]  # the bundled set's first 100 molecules are water


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """PySCF on one OpenMP thread: on a busy 2-core machine two threads that share the process
    with torch's runtime are several times slower."""
    from pyscf import lib

    with lib.with_omp_threads(1):
        yield


@pytest.fixture(scope="module")
def waters():
    """``(record, mol, converged Fock under CHEAP, minao cycles)`` of four water molecules."""
    out = []
    for record in HamiltonianDataset(ids=WATER_IDS).records():
        assert len(record.atomic_numbers) == 3
        mol = CHEAP.mole(record.atomic_numbers, record.positions)
        run, fock = run_scf(CHEAP, mol, "minao")
        assert run.converged
        out.append((record, mol, fock, run.cycles))
    return out


def test_true_hamiltonian_achieves_the_optimal_ratio(waters):
    record, _, fock, minao_cycles = waters[0]
    task = SCFTask("water", record.atomic_numbers, record.positions, fock, label=fock)
    result = accelerate(task, CHEAP)
    assert result.prediction.converged and result.prediction.cycles == 1
    assert result.guesses["minao"].cycles == minao_cycles  # deterministic cycle count
    assert tuple(result.guesses) == GUESSES
    for g in GUESSES:
        assert result.guesses[g].converged
        assert result.achieved_ratio(g) == result.optimal_ratio(g) == 1 / result.guesses[g].cycles
        assert result.energy_difference(g) < 1e-8
        # the prediction is exact: no guess-started cycle is as close, so the ratio is undefined
        assert math.isnan(result.error_level_ratio(g))
    assert result.h_mae == 0.0 and result.label_mae < 1e-6
    assert result.commutator.max_abs < 1e-5


def test_achieved_ratio_worsens_with_noise(waters):
    levels = [0.0, 1e-3, 1e-2, 1e-1]  # Hartree, std of each independent entry
    rng = np.random.default_rng(7)
    ratios = np.zeros((len(waters), len(levels)))
    for i, (_, mol, fock, guess_cycles) in enumerate(waters):
        for j, sigma in enumerate(levels):
            run, _ = run_scf(CHEAP, mol, fock + hermitian_noise(len(fock), sigma, rng))
            assert run.converged
            ratios[i, j] = run.cycles / guess_cycles
    mean = ratios.mean(axis=0)
    assert np.all(np.diff(mean) > 0), mean
    assert mean[0] == pytest.approx(np.mean([1 / w[3] for w in waters]))


def test_error_level_cycle_is_where_the_guess_run_reaches_the_prediction(waters):
    record, _, fock, _ = waters[1]
    noisy = fock + hermitian_noise(len(fock), 1e-3, np.random.default_rng(0))
    task = SCFTask("water", record.atomic_numbers, record.positions, noisy, label=fock)
    result = accelerate(task, CHEAP, guesses=("minao",), commutator=False)
    run = result.guesses["minao"]
    assert result.h_mae == pytest.approx(np.abs(noisy - fock).mean())
    assert run.error_cycle is not None and len(run.mae_trace) == run.cycles
    assert run.mae_trace[run.error_cycle - 1] <= result.h_mae
    assert all(mae > result.h_mae for mae in run.mae_trace[: run.error_cycle - 1])
    assert 0 < result.error_level_ratio("minao") == run.error_cycle / run.cycles <= 1
    assert result.energy_difference("minao") < 1e-8


def test_guess_runs_against_a_label_are_computed_once(waters, monkeypatch, tmp_path):
    """Comparing models on the same molecules: the guess-started SCFs (model-independent) run
    once; a second model with another error level reuses them with its own error cycle, the
    same as a fresh run gives."""
    from deqh_core.inference import scf

    monkeypatch.setenv("DEQH_CACHE", str(tmp_path))
    record, _, fock, _ = waters[3]
    rng = np.random.default_rng(1)
    tasks = [
        SCFTask("water", record.atomic_numbers, record.positions, fock + noise, label=fock)
        for noise in (hermitian_noise(len(fock), s, rng) for s in (1e-3, 1e-2))
    ]
    calls = []
    real = scf.run_scf

    def counting(recipe, mol, start, *args):
        calls.append(start if isinstance(start, str) else "prediction")
        return real(recipe, mol, start, *args)

    monkeypatch.setattr(scf, "run_scf", counting)
    first, second = (accelerate(t, CHEAP, commutator=False) for t in tasks)
    assert calls == ["prediction", *GUESSES, "prediction"]  # the second reused the guesses
    fresh = accelerate(tasks[1], CHEAP, commutator=False, guess_cache=False)
    for g in GUESSES:
        assert second.guesses[g].cycles == fresh.guesses[g].cycles
        assert second.guesses[g].mae_trace == pytest.approx(fresh.guesses[g].mae_trace)
        assert second.guesses[g].error_cycle == fresh.guesses[g].error_cycle
    assert first.guesses["minao"].error_cycle != second.guesses["minao"].error_cycle


def test_commutator_error_vanishes_at_convergence_and_grows_with_noise(waters):
    record, mol, fock, _ = waters[2]
    density = density_from_hamiltonian(fock, mol.intor("int1e_ovlp"), mol.nelectron)
    assert np.trace(density @ mol.intor("int1e_ovlp")) == pytest.approx(mol.nelectron)
    rng = np.random.default_rng(1)
    errors = [
        commutator_error(
            fock + hermitian_noise(len(fock), s, rng),
            record.atomic_numbers,
            record.positions,
            CHEAP,
        )
        for s in (0.0, 1e-4, 1e-3, 1e-2)
    ]
    assert errors[0].max_abs < 1e-5 and errors[0].frobenius < 1e-4
    assert all(b.max_abs > a.max_abs for a, b in itertools.pairwise(errors))
    assert all(b.frobenius > a.frobenius for a, b in itertools.pairwise(errors))


def test_orbital_energy_error_grows_with_noise(waters):
    record, mol, _, _ = waters[0]
    rows = noise_orbital_errors(
        record.hamiltonian, mol.intor("int1e_ovlp"), 5, [1e-5, 1e-3], samples=4, seed=0
    )
    assert len(rows) == 8
    small = np.median([r["occ_mae"] for r in rows if r["sigma"] == 1e-5])
    large = np.median([r["occ_mae"] for r in rows if r["sigma"] == 1e-3])
    assert 10 < large / small < 1000  # first order in the noise


@pytest.fixture(scope="module")
def run_dir(example_plugin, tmp_path_factory):
    """A tfn-mini DEQ trained for 2 steps on the bundled data."""
    out = tmp_path_factory.mktemp("scf") / "run"
    cfg = load_config(
        None,
        None,
        {
            "model": {"backbone": "tfn-mini", "deq": True, "params": {"channels": 4, "layers": 1}},
            "data": {"batch_size": 3, "sizes": "12/3/4"},
            "deq": {"f_max_iter": 3},
            "optim": {"max_steps": 2, "warmup_steps": 1},
            "run": {
                "out": str(out),
                "dtype": "float64",
                "val_every": 1,
                "log_every": 1,
                "progress": False,
            },
        },
    )
    train(cfg)
    return out


def test_scf_command_writes_csv_json_and_markdown(run_dir, tmp_path):
    out = tmp_path / "scf"
    args = ["scf", str(run_dir / "last.pt"), "--limit", "2", "--workers", "2", "--xc", "hf"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    # a 2-step model's DEQ converges nowhere: flagged, exit 1, the report written anyway
    assert result.exit_code == 1 and "2 of 2 molecule(s) did not converge" in result.output
    assert "overridden: xc=hf" in result.output
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress", "--keep-going"])
    assert result.exit_code == 0, result.output
    lines = (out / "scf.csv").read_text().splitlines()
    assert len(lines) == 3 and "minao_achieved_ratio" in lines[0]
    summary = json.loads((out / "scf_summary.json").read_text())["summary"]
    assert summary["molecules"] == 2 and summary["reference"] == ["scf"]  # recipe overridden
    assert tuple(summary["guesses"]) == GUESSES
    for g in GUESSES:
        assert summary["guesses"][g]["converged"] == 2
        assert summary["guesses"][g]["optimal_ratio"]["n"] == 2
    assert summary["energy_diff_max"] < 1e-8
    table = (out / "scf_table.md").read_text()
    assert "| minao | Optimal ratio |" in table and "Error-level ratio" in table


def test_scf_command_on_xyz_molecules(run_dir, tmp_path):
    record = next(HamiltonianDataset(ids=[5]).records())
    xyz = tmp_path / "water.xyz"
    atoms = "\n".join(
        f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip("OHH", record.positions)
    )
    xyz.write_text(f"3\nwater\n{atoms}\n")
    out = tmp_path / "xyz"
    args = ["scf", str(run_dir / "last.pt"), str(xyz), "--recipe", "xc=hf", "--guess", "minao"]
    args.append("--keep-going")
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "scf_summary.json").read_text())["summary"]
    assert summary["reference"] == ["scf"] and list(summary["guesses"]) == ["minao"]
    bad = CliRunner().invoke(app, ["scf", str(run_dir / "last.pt"), "--basis", "sto-3g"])
    assert bad.exit_code == 1 and "the model predicts in" in bad.output


def test_analyze_convergence_command(run_dir, tmp_path):
    rows = training_nfe(run_dir)
    assert {r["split"] for r in rows} == {"train", "val"} and all(r["deq_nfe"] for r in rows)
    out = tmp_path / "analysis"
    water = next(i for i in json.loads((run_dir / "split.json").read_text())["test"] if i < 100)
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            "convergence",
            str(run_dir / "last.pt"),
            "--molecule-id",
            str(water),
            "--iterations",
            "2",
            "--nfe-checkpoint",
            str(run_dir / "best.pt"),
            "--nfe-molecules",
            "1",
            "--levels",
            "1e-4,1e-2",
            "--samples",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("convergence", "training_nfe", "noise"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.csv").is_file()
    trace = (out / "convergence.csv").read_text().splitlines()
    methods = {line.split(",")[0] for line in trace[1:]}
    assert methods == {"PySCF SCF (minao)", "DEQ from identity", "DEQ from minao"}
    assert sum(line.startswith("DEQ from identity,") for line in trace) == 3  # start + 2
    assert (out / "checkpoint_nfe.csv").is_file()
