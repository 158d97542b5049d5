"""The bundled dataset and the README's main job on it."""

import numpy as np
import scipy.linalg
from typer.testing import CliRunner

from deqh_core.ao.basis import mole
from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.recipe import Recipe


def test_bundled_data_is_labelled_with_the_qh9_recipe():
    data = HamiltonianDataset()
    qh9 = Recipe()
    assert data.recipe["xc"] == "b3lyp5" and data.recipe["basis"] == "def2-svp"
    assert {k: data.recipe[k] for k in ("grid_level", "conv_tol", "conv_tol_grad")} == {
        "grid_level": qh9.grid_level,
        "conv_tol": qh9.conv_tol,
        "conv_tol_grad": qh9.conv_tol_grad,
    }
    assert len(data) == 200 and BUNDLED.stat().st_size < 6e6
    # every label is a real SCF solution: occupied orbital energies are negative, gap positive
    record = next(data.records())
    s = mole(record.atomic_numbers, record.positions, "def2-svp").intor("int1e_ovlp")
    eps = scipy.linalg.eigh(record.hamiltonian, s, eigvals_only=True)
    n_occ = int(record.atomic_numbers.sum()) // 2
    assert eps[n_occ - 1] < 0 < eps[n_occ] - eps[n_occ - 1]
    assert np.isclose(record.energy, -76.3, atol=0.2)  # B3LYP/def2-SVP water, Hartree


def test_data_check_runs_the_pipeline_end_to_end():
    result = CliRunner().invoke(app, ["data", "check", "--scf-sample", "1"])
    assert result.exit_code == 0, result.output
    assert "exact" in result.output and "max|F[D(H)]-H|" in result.output
