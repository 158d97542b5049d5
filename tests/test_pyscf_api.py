"""deqh_core.pyscf with the shipped qh9-small model, against PySCF itself: the same converged
energy as PySCF's best start (minao) in fewer cycles, on QH9-stable-id val molecules the model
never saw; PySCF's own hook (get_init_guess); the SCF's grid built once; clear refusals."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from pyscf import dft, gto, lib
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.inference.pretrained import SHIPPED, resolve_checkpoint, run_folder
from deqh_core.pyscf import OutOfDomainWarning, accelerate, init_guess
from deqh_core.training.checkpoint import load_checkpoint
from deqh_core.util.errors import CheckpointError, DataError

# QH9-stable id 35 (QM9 gdb 36, CNC=O), val part: never trained on, 9 atoms (in the domain)
N_METHYLFORMAMIDE = """
C 0.01474916 1.47888256 -0.03509326
N 0.18708077 0.03831317 -0.02906851
C 0.45703661 -0.66858895 1.10069001
O 0.58457996 -0.19876202 2.21119705
H 0.76025289 1.96736104 -0.67198126
H -0.98462423 1.75984483 -0.38485103
H 0.14269849 1.82387718 0.99149397
H 0.10386349 -0.46937726 -0.89461379
H 0.55047568 -1.75253452 0.88868242
"""
# QH9-stable id 21 (QM9 gdb 22, CC(C)O), val part: 12 atoms, larger than any training molecule
ISOPROPANOL = """
C -0.03315871 1.54782566 -0.00438815
C -0.01108534 0.01859095 0.01676117
C 0.70938384 -0.53596711 1.23978444
O -1.33219841 -0.51712554 0.05236057
H 0.98215692 1.95715900 -0.03182225
H -0.56388100 1.92087623 -0.88845865
H -0.54082548 1.93340945 0.88575489
H 0.51042122 -0.33767241 -0.88819176
H 0.22240492 -0.18785860 2.15650245
H 0.68242024 -1.62887638 1.23305141
H 1.75434301 -0.21246950 1.25524188
H -1.81818681 -0.15577435 -0.69553962
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with lib.with_omp_threads(1):
        yield


def _rks(atom: str, **mol_options):
    """QH9's recipe as a user writes it in PySCF."""
    mol = gto.M(atom=atom, basis="def2-svp", verbose=0, **mol_options)
    mf = dft.RKS(mol, xc="b3lyp5")
    mf.grids.level, mf.conv_tol = 3, 1e-9
    return mf


def _kernel(mf, dm0=None) -> tuple[float, int]:
    mf.kernel(dm0=dm0)
    assert mf.converged
    return mf.e_tot, mf.cycles


@pytest.fixture(scope="module")
def minao():
    """Energy and cycles of the SCF from PySCF's minao start (its best on QH9 molecules)."""
    return _kernel(_rks(N_METHYLFORMAMIDE))


def test_init_guess_reaches_the_minao_energy_in_fewer_cycles(minao):
    mf = _rks(N_METHYLFORMAMIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)  # inside the training domain
        dm = init_guess(mf)
    np.testing.assert_allclose(np.trace(dm @ mf.get_ovlp()), mf.mol.nelectron, atol=1e-8)
    e_model, n_model = _kernel(mf, dm)
    assert abs(e_model - minao[0]) < 1e-7
    assert n_model < minao[1], (n_model, minao[1])


def test_exact_h0_is_built_with_the_scf_own_grid_and_integrals(minao):
    mf = _rks(N_METHYLFORMAMIDE)
    dm = init_guess(mf, h0="exact")
    grid = mf.grids.coords  # built for the model's H0 ...
    assert grid is not None and mf._eri is not None
    fast = init_guess(_rks(N_METHYLFORMAMIDE))  # density fitting and a coarse grid
    assert np.abs(dm - fast).max() < 1e-3  # the same start, within the model's own error
    e_model, n_model = _kernel(mf, dm)
    assert mf.grids.coords is grid  # ... and reused by the SCF, not built twice
    assert abs(e_model - minao[0]) < 1e-7 and n_model < minao[1]


def test_accelerate_uses_pyscf_own_hook():
    mf = accelerate(_rks(N_METHYLFORMAMIDE))
    assert mf.init_guess == "deqh:qh9-small"
    e_hooked, n_hooked = _kernel(mf)  # a plain kernel() starts from the model
    e_given, n_given = _kernel(_rks(N_METHYLFORMAMIDE), init_guess(_rks(N_METHYLFORMAMIDE)))
    assert n_hooked == n_given and abs(e_hooked - e_given) < 1e-8
    info = mf.deqh_guess
    assert info.h0 == "fast" and info.deq_converged is not False and info.prior_seconds > 0


def test_a_molecule_unlike_the_training_data_warns():
    mol = gto.M(atom=ISOPROPANOL, basis="def2svp", verbose=0)  # PySCF's spelling of the basis
    with pytest.warns(OutOfDomainWarning, match="12 atoms"):
        dm = init_guess(mol)
    assert dm.shape == (mol.nao, mol.nao)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(atom="O 0 0 0; O 0 0 1.21", spin=2), "open shell"),
        (dict(atom=N_METHYLFORMAMIDE, basis="cc-pvdz"), "basis 'cc-pvdz'"),
        (dict(atom=N_METHYLFORMAMIDE, cart=True), "Cartesian"),
        (dict(atom="Cl 0 0 0; H 0 0 1.27"), "element Cl"),
    ],
)
def test_what_the_model_cannot_do_is_refused(options, message):
    mol = gto.M(**{"basis": "def2-svp", "verbose": 0, **options})
    with pytest.raises(DataError, match=message):
        init_guess(mol)
    with pytest.raises(DataError, match=message):
        accelerate(dft.RKS(mol, xc="b3lyp5"))  # refused now, not at kernel()


def test_outputs_of_a_shipped_model_never_go_into_the_package():
    for given in ("qh9-small", SHIPPED["qh9-small"].path):  # by name or by its file
        assert run_folder(given) == Path("qh9-small")


def test_a_model_name_that_is_not_shipped_names_both():
    with pytest.raises(CheckpointError, match=r"no such checkpoint.*qh9-small"):
        resolve_checkpoint("qh9-huge")


def test_shipped_models_are_listed_with_their_card():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name, model in SHIPPED.items():
        assert name in result.output
        assert model.path.stat().st_size < 5e6  # small enough for the wheel
        card = load_checkpoint(model.path)["card"]
        assert card["name"] == name and card["license"] and card["training_data"]
        assert "optimizer" not in load_checkpoint(model.path)
    info = CliRunner().invoke(app, ["checkpoint", "info", "qh9-small"])
    assert info.exit_code == 0 and '"license"' in info.output


def test_scf_command_runs_a_shipped_model_without_training(tmp_path, monkeypatch):
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n")
    monkeypatch.chdir(tmp_path)
    args = ["scf", "qh9-small", str(xyz), "--guess", "minao", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "qh9-small" / "scf" / "scf.csv").is_file()  # not inside the package
    assert "of which prior H0" in result.output
