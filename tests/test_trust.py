"""Using a model safely: the labels' recipe travels with the checkpoint, molecules outside the
training domain are refused or flagged, degenerate inputs give clear errors, electron counts
follow PySCF (ECPs), labels must be symmetric."""

import csv
import shutil

import numpy as np
import pytest
import torch
from ase.build import molecule
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB
from deqh_core.inference.predict import predict_files
from deqh_core.inference.scf import commutator_error
from deqh_core.training.config import load_config
from deqh_core.training.trainer import Trainer
from deqh_core.util.errors import DataError

runner = CliRunner()
HF = ["--sigma", "0.02", "--xc", "hf", "--no-progress"]  # quick labels: Hartree-Fock
QUIET = ["--device", "cpu", "--no-progress"]


def _xyz(path, symbols, positions, comment="m"):
    lines = [str(len(symbols)), comment]
    lines += [f"{s} {x:.10f} {y:.10f} {z:.10f}" for s, (x, y, z) in zip(symbols, positions)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(out, data=None, deq=False, steps=1, **params):
    cfg = load_config(
        None,
        None,
        {
            "model": {"backbone": "tfn-mini", "deq": deq, "params": {"channels": 4, "layers": 1}},
            "data": {"path": str(data) if data else None, "batch_size": 4, "sizes": "0.6/0.2/0.2"},
            "deq": {"f_max_iter": 2},
            "optim": {"max_steps": steps, "warmup_steps": 1},
            "run": {"out": str(out), "dtype": "float64", "progress": False, "device": "cpu"},
        },
    )
    Trainer(cfg).fit()
    return out / "last.pt"


@pytest.fixture(scope="module")
def bundled_model(example_plugin, tmp_path_factory):
    """A tfn-mini predictor trained 1 step on the bundled water/ethanol data."""
    return _train(tmp_path_factory.mktemp("trust") / "run")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xyz")
    water = next(HamiltonianDataset(ids=[0]).records())  # a training-set geometry
    methanol = molecule("CH3OH")
    h2s = molecule("SH2")
    return {
        "water": _xyz(folder / "water.xyz", "OHH", water.positions),
        "methanol": _xyz(
            folder / "methanol.xyz", methanol.get_chemical_symbols(), methanol.positions
        ),
        "h2s": _xyz(folder / "h2s.xyz", h2s.get_chemical_symbols(), h2s.positions),
        "close": _xyz(folder / "close.xyz", "HH", [[0, 0, 0], [0, 0, 0.05]]),
        "same": _xyz(
            folder / "same.xyz", "OHHHH", [*water.positions, water.positions[1], [4, 4, 4]]
        ),
    }


def _predict(checkpoint, *args):
    return runner.invoke(app, ["predict", str(checkpoint), *map(str, args), "--device", "cpu"])


def test_sulfur_is_refused_methanol_warned_and_check_is_the_commutator(
    bundled_model, inputs, tmp_path
):
    out = tmp_path / "p"
    result = _predict(bundled_model, inputs["water"], inputs["h2s"], "--out", out)
    assert result.exit_code == 1 and not out.exists()
    assert (
        "h2s.xyz: frame 0: element S (Z=16) is not in the checkpoint's AO layout" in result.output
    )

    result = _predict(bundled_model, inputs["water"], inputs["methanol"], "--out", out, "--check")
    assert result.exit_code == 0, result.output
    assert "methanol.xyz: frame 0: 6 atoms: not among the training sizes (3, 9)" in result.output
    assert "composition CH4O not in the training part" in result.output
    assert "water.xyz: frame 0" not in result.output.replace("water.xyz:0", "")  # no warning
    rows = {r["formula"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["H2O"]["warnings"] == "" and "CH4O" in rows["CH4O"]["warnings"]
    # --check is the commutator of the recipe's Fock matrix of the saved H's density
    saved = np.load(out / "methanol.npz")
    expected = commutator_error(
        saved["hamiltonian"], saved["atomic_numbers"], saved["positions"], Recipe()
    )
    assert float(saved["commutator_max"]) == pytest.approx(expected.max_abs, rel=1e-10)
    assert float(rows["CH4O"]["commutator_max"]) == pytest.approx(expected.max_abs, rel=1e-10)
    assert expected.max_abs > 1e-3  # an untrained model is far from self-consistent

    # --strict turns the domain warning into exit 1 (after writing everything)
    result = _predict(bundled_model, inputs["methanol"], "--out", out, "--strict")
    assert result.exit_code == 1 and "outside the training domain" in result.output


def test_degenerate_geometries_and_electron_counts_give_clear_errors(
    bundled_model, inputs, tmp_path
):
    result = _predict(bundled_model, inputs["same"], "--out", tmp_path / "a")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "same.xyz: frame 0: atoms 1 (H) and 3 (H) are 0.000 Å apart" in result.output
    assert "closer than any bond (0.5 Å)" in result.output
    # asked to go on anyway, the singular S stops it, naming the same atoms
    result = _predict(bundled_model, inputs["same"], "--out", tmp_path / "a", "--keep-going")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "same.xyz: frame 0: the overlap matrix is singular" in result.output
    assert "atoms 1 (H) and 3 (H) are 0.000 Å apart" in result.output
    result = _predict(bundled_model, inputs["water"], "--charge", "-40", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "water.xyz: frame 0: 50 electrons (charge -40): 25 doubly occupied orbitals, but " in (
        result.output
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = _predict(bundled_model, inputs["water"], "--charge", "2", "--out", tmp_path / "c")
    assert result.exit_code == 0 and "the model has no charge input" in result.output
    # two atoms 0.05 Å apart: refused; with --keep-going solvable, but flagged
    result = _predict(bundled_model, inputs["close"], "--out", tmp_path / "d")
    assert result.exit_code == 1 and "are 0.050 Å apart, closer than any bond" in result.output
    assert not (tmp_path / "d").exists()
    result = _predict(bundled_model, inputs["close"], "--out", tmp_path / "d", "--keep-going")
    assert "atom 0 (H) is 0.050 Å from its nearest neighbour" in result.output


def test_two_close_atoms_with_a_deq_model_are_refused_or_flagged(example_plugin, inputs, tmp_path):
    checkpoint = _train(tmp_path / "deq", deq=True)
    result = _predict(checkpoint, inputs["close"], "--out", tmp_path / "p")
    assert result.exit_code == 1, result.output
    assert "0.050 Å apart, closer than any bond" in result.output
    assert not (tmp_path / "p").exists()
    result = _predict(checkpoint, inputs["close"], "--out", tmp_path / "p", "--keep-going")
    assert "0.050 Å" in result.output  # the domain warning
    assert (tmp_path / "p" / "summary.csv").is_file()


def test_a_molecule_whose_deq_breaks_down_is_flagged_beside_good_ones(
    example_plugin, inputs, tmp_path
):
    """A non-finite iterate for methanol: it is flagged as unconverged (its estimate stays the
    last finite one), water beside it in the same batch is predicted as alone."""
    from deqh_core.inference.predict import predict_frames, prepare
    from deqh_core.solvers.protocol import Blocks

    checkpoint = _train(tmp_path / "deq", deq=True)
    xyz = [inputs["water"], inputs["methanol"]]
    loaded, labels, _, frames, _ = prepare(checkpoint, xyz)
    alone = predict_frames(loaded, frames[:1], recipe=labels)[0]
    backbone = loaded.model.net.solver.backbone
    forward = backbone.forward

    def poisoned(batch, node, injection):
        out = forward(batch, node, injection)
        carbon = torch.zeros(batch.num_graphs, dtype=torch.bool).index_put(
            (batch.batch,), batch.z == 6, accumulate=True
        )[batch.batch]
        return Blocks(torch.where(carbon[:, None, None], torch.nan, out.diag), out.off)

    backbone.forward = poisoned
    water, methanol = predict_frames(loaded, frames, recipe=labels)
    assert methanol.deq_converged is False and methanol.unconverged
    assert np.isfinite(methanol.hamiltonian).all()
    assert water.deq_converged == alone.deq_converged
    np.testing.assert_allclose(water.hamiltonian, alone.hamiltonian, atol=1e-10)


def test_scf_uses_the_checkpoints_recipe_when_the_data_is_gone(example_plugin, inputs, tmp_path):
    """Labels made with Hartree-Fock: moving the file away must not switch deqh scf to B3LYP."""
    data = tmp_path / "hf.db"
    made = runner.invoke(
        app,
        ["data", "generate", str(data), "--molecule", "H2O", "--copies", "5", *HF],
    )
    assert made.exit_code == 0, made.output
    checkpoint = _train(tmp_path / "run", data=data)
    args = ["scf", str(checkpoint), str(inputs["water"]), "--guess", "minao", "--no-progress"]

    def energies(out):
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "recipe: hf/def2-svp" in result.output and "from the checkpoint" in result.output
        rows = list(csv.DictReader((out / "scf.csv").open()))
        return [float(r[key]) for r in rows for key in ("pred_energy", "minao_energy")]

    before = energies(tmp_path / "scf1")
    data.rename(tmp_path / "moved.db")
    after = energies(tmp_path / "scf2")
    assert after == pytest.approx(before, abs=1e-9)
    recipe = Recipe(xc="hf")
    positions = np.loadtxt(inputs["water"], skiprows=2, usecols=(1, 2, 3))
    assert before[1] == pytest.approx(recipe.rks(recipe.mole([8, 1, 1], positions)).kernel())


def test_evaluate_counts_electrons_with_ecps_as_pyscf(example_plugin, tmp_path):
    """HI in def2-TZVP: iodine's ECP replaces 28 electrons, so 13 orbitals are occupied."""
    xyz = _xyz(tmp_path / "hi.xyz", ["H", "I"], [[0, 0, 0], [0, 0, 1.61]])
    data = tmp_path / "hi.db"
    made = runner.invoke(
        app,
        [
            "data",
            "generate",
            str(data),
            "--xyz",
            str(xyz),
            "--copies",
            "5",
            *HF,
            "--basis",
            "def2-tzvp",
        ],
    )
    assert made.exit_code == 0, made.output
    checkpoint = _train(tmp_path / "run", data=data)
    per_molecule = tmp_path / "m.csv"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(checkpoint),
            "--split",
            "all",
            "--csv",
            str(per_molecule),
            *QUIET,
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(per_molecule.open()))
    records = {r.id: r for r in HamiltonianDataset(data).records()}
    recipe = Recipe(xc="hf", basis="def2-tzvp")
    for row in rows:
        record = records[int(row["mol_id"])]
        mol = recipe.mole(record.atomic_numbers, record.positions)
        assert int(row["n_occ"]) == mol.nelectron // 2 == 13


def test_asymmetric_labels_are_refused_naming_the_record(tmp_path):
    bad = tmp_path / "bad.db"
    shutil.copy(BUNDLED, bad)
    with HamiltonianDB(bad) as db:
        record = db.get(7)
    record.hamiltonian[0, 5] += 0.5
    import sqlite3

    with sqlite3.connect(bad) as con:
        blob = np.ascontiguousarray(record.hamiltonian, dtype="<f8").tobytes()
        con.execute("UPDATE data SET Ham = ? WHERE id = 7", (blob,))
    result = runner.invoke(app, ["data", "check", str(bad), "--scf-sample", "0"])
    assert result.exit_code == 1
    assert "molecule id 7" in result.output and "not symmetric" in result.output
    with pytest.raises(DataError, match=r"bad\.db: molecule id 7: Hamiltonian label is not symm"):
        HamiltonianDataset(bad, ids=[7])[0]
    clean = runner.invoke(app, ["data", "check", "--scf-sample", "0"])
    assert clean.exit_code == 0 and "labels symmetric" in clean.output


def test_generate_exits_nonzero_when_nothing_could_be_labelled(tmp_path):
    out = tmp_path / "f.db"
    result = runner.invoke(
        app,
        ["data", "generate", str(out), "--molecule", "H2O", "--max-cycle", "1", "--no-progress"],
    )
    assert result.exit_code == 1 and "nothing could be labelled" in result.output
    with HamiltonianDB(out) as db:
        assert len(db.failures()) == 1 and len(db) == 0


def test_predict_api_refuses_elements_missing_from_the_training_part(bundled_model, inputs):
    from deqh_core.inference.loaded import load_model
    from deqh_core.inference.predict import read_inputs

    layout = load_model(bundled_model).layout
    with pytest.raises(
        DataError,
        match=r"methanol\.xyz: frame 0: element C \(Z=6\) is not in the checkpoint's training data",
    ):
        read_inputs([inputs["methanol"]], layout, elements=[1, 8])
    predictions = predict_files(bundled_model, [inputs["water"]], None)
    assert predictions[0].n_occ == 5 and predictions[0].warnings == []
