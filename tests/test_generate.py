import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.linalg
from pyscf import dft, gto
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.generate import (
    Failure,
    build_tasks,
    generate,
    label,
    molecule_geometry,
    shard_tasks,
    xyz_geometries,
)
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB
from deqh_core.util.errors import BasisError, DataError

# Cheap but tight: the eigenvalue comparison below is only as good as the SCF convergence.
CHEAP = Recipe(xc="lda,vwn", basis="sto-3g", grid_level=1, conv_tol=1e-12, conv_tol_grad=1e-7)


def waters(n=3, seed=7):
    return build_tasks([molecule_geometry("H2O")], n_copies=n, sigma=0.03, seed=seed)


def pyscf_run(record, recipe):
    atoms = [(int(z), tuple(p)) for z, p in zip(record.atomic_numbers, record.positions)]
    mol = gto.M(atom=atoms, basis=recipe.basis, unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level = recipe.xc, recipe.grid_level
    mf.conv_tol, mf.conv_tol_grad, mf.verbose = recipe.conv_tol, recipe.conv_tol_grad, 0
    mf.kernel()
    assert mf.converged
    return mol, mf


def test_labels_reproduce_pyscf(tmp_path):
    tasks = waters(3)
    out = tmp_path / "w.db"
    summary = generate(tasks, out, CHEAP, workers=2, progress=False)
    assert (summary.written, summary.failed, summary.skipped) == (3, 0, 0)
    with HamiltonianDB(out) as db:
        assert db.ids() == [0, 1, 2]
        assert db.failures() == {}
        for task, rec in zip(tasks, db):
            assert rec.source == f"H2O#0/copy{task.id}"
            np.testing.assert_array_equal(rec.positions, task.positions)
            np.testing.assert_array_equal(rec.atomic_numbers, [8, 1, 1])
            assert rec.overlap is None
            assert rec.n_cycles > 1 and rec.wall_time > 0
            mol, mf = pyscf_run(rec, CHEAP)
            eps = scipy.linalg.eigh(rec.hamiltonian, mol.intor("int1e_ovlp"), eigvals_only=True)
            np.testing.assert_allclose(eps, mf.mo_energy, atol=1e-6)
            assert rec.energy == pytest.approx(mf.e_tot, abs=1e-8)


def test_recipe_stored_and_never_mixed(tmp_path):
    out = tmp_path / "w.db"
    tasks = waters(1)
    generate(tasks, out, CHEAP, progress=False)
    with HamiltonianDB(out) as db:
        meta = db.recipe
    import pyscf

    assert meta["xc"] == "lda,vwn" and meta["basis"] == "sto-3g" and meta["grid_level"] == 1
    assert meta["conv_tol"] == 1e-12 and meta["conv_tol_grad"] == 1e-7
    assert meta["pyscf_version"] == pyscf.__version__
    assert meta["units"] == {"positions": "angstrom", "matrices": "hartree"}
    assert meta["ao_order"] == "pyscf" and meta["matrix"] == "converged Fock matrix"
    with pytest.raises(DataError, match=r"another recipe.*xc"):
        generate(tasks, out, CHEAP.model_copy(update={"xc": "pbe"}), progress=False)
    # resuming with other inputs would put other molecules under the same ids
    with pytest.raises(DataError, match="same inputs"):
        generate(waters(1, seed=8), out, CHEAP, progress=False)


def test_default_recipe_is_qh9():
    r = Recipe()
    assert (r.xc, r.basis, r.grid_level) == ("b3lyp5", "def2-svp", 3)
    with pytest.raises(ValueError, match="functional"):
        Recipe(xc="b3lypp")
    with pytest.raises(ValueError):
        Recipe(basis="sto-3g", extra_field=1)


def test_store_overlap():
    rec = label(waters(1)[0], CHEAP, store_overlap=True)
    mol, _ = pyscf_run(rec, CHEAP)
    np.testing.assert_allclose(rec.overlap, mol.intor("int1e_ovlp"), atol=1e-12)


def test_unconverged_is_a_failure_not_a_label(tmp_path):
    out = tmp_path / "w.db"
    recipe = CHEAP.model_copy(update={"max_cycle": 2})
    summary = generate(waters(2), out, recipe, progress=False)
    assert (summary.written, summary.failed) == (0, 2)
    with HamiltonianDB(out) as db:
        assert len(db) == 0
        assert set(db.failures()) == {0, 1}
        assert "not converged" in db.failures()[0]
    again = generate(waters(2), out, recipe, progress=False)
    assert (again.written, again.failed, again.skipped) == (0, 0, 2)
    assert isinstance(label(waters(1)[0], recipe), Failure)


@pytest.mark.filterwarnings("ignore:Basis may be available")
@pytest.mark.parametrize(("element", "basis"), [("U", "def2-svp"), ("Kr", "6-31g")])
def test_element_missing_from_basis(tmp_path, element, basis):
    xyz = tmp_path / "odd.xyz"
    xyz.write_text(f"2\n\n{element} 0 0 0\n{element} 0 0 3\n")
    tasks = build_tasks(xyz_geometries(xyz))
    out = tmp_path / "x.db"
    with pytest.raises(BasisError, match=rf"element {element}\b"):
        generate(tasks, out, Recipe(basis=basis), progress=False)
    assert not out.exists()
    with pytest.raises(BasisError, match=element):
        label(tasks[0], Recipe(basis=basis))


def test_open_shell_refused():
    with pytest.raises(DataError, match="closed-shell"):
        label(waters(1)[0], CHEAP.model_copy(update={"spin": 2}))
    with pytest.raises(DataError, match="odd number of electrons"):
        label(waters(1)[0], CHEAP.model_copy(update={"charge": 1}))


def test_shards_cover_all_ids_disjointly(tmp_path):
    tasks = build_tasks([molecule_geometry("H2")], n_copies=5, sigma=0.02, seed=0)
    ids = []
    for i in range(2):
        out = tmp_path / f"shard{i}.db"
        generate(tasks, out, CHEAP, shard=(i, 2), progress=False)
        with HamiltonianDB(out) as db:
            assert all(k % 2 == i for k in db.ids())
            ids += db.ids()
    assert sorted(ids) == list(range(5))
    with pytest.raises(DataError, match="shard"):
        shard_tasks(tasks, (2, 2))


def test_perturbation_is_deterministic(tmp_path):
    geoms = [molecule_geometry("H2O"), molecule_geometry("CH4")]
    a = build_tasks(geoms, n_copies=3, sigma=0.05, seed=11)
    b = build_tasks(geoms, n_copies=3, sigma=0.05, seed=11)
    c = build_tasks(geoms, n_copies=3, sigma=0.05, seed=12)
    assert [t.id for t in a] == list(range(6))
    assert [t.source for t in a][2:4] == ["H2O#0/copy2", "CH4#0/copy0"]
    for s, t, u in zip(a, b, c):
        np.testing.assert_array_equal(s.positions, t.positions)
        assert not np.allclose(s.positions, u.positions)
    # a task's geometry depends only on (seed, id): appending inputs changes nothing before
    longer = build_tasks([*geoms, molecule_geometry("NH3")], n_copies=3, sigma=0.05, seed=11)
    for s, t in zip(a, longer):
        np.testing.assert_array_equal(s.positions, t.positions)
    noise = a[0].positions - geoms[0].positions
    assert 0 < np.abs(noise).max() < 0.3
    # no perturbation: one task per geometry, as is
    plain = build_tasks(geoms, n_copies=4, sigma=0.0)
    assert len(plain) == 2
    np.testing.assert_array_equal(plain[1].positions, geoms[1].positions)
    xyz = tmp_path / "two.xyz"
    xyz.write_text("1\n\nH 0 0 0\n1\n\nH 0 0 1\n")
    assert [t.source for t in build_tasks(xyz_geometries(xyz))] == [
        "two.xyz#0/copy0",
        "two.xyz#1/copy0",
    ]


def committed(path):
    """Rows of the data table, or [] while the file or table does not exist yet."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT id, wall_time, Ham FROM data ORDER BY id").fetchall()
    except sqlite3.Error:
        return []


def test_kill_and_resume(tmp_path):
    n = 8
    out = tmp_path / "run.db"
    cmd = [
        sys.executable, "-m", "deqh_core", "data", "generate", str(out),
        "--molecule", "H2O", "--copies", str(n), "--sigma", "0.02", "--seed", "3",
        "--xc", "lda,vwn", "--basis", "def2-svp", "--grid-level", "1", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if committed(out):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    with sqlite3.connect(out) as con:  # read-write: may roll back a hot journal
        before = con.execute("SELECT id, wall_time, Ham FROM data ORDER BY id").fetchall()
    assert 1 <= len(before) < n, "the first run should be killed midway"

    done = subprocess.run(cmd, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert f"skipped {len(before)} already done" in done.stdout.decode()
    after = committed(out)
    assert [row[0] for row in after] == list(range(n))
    assert {row[0]: row for row in after if row[0] in {r[0] for r in before}} == {
        row[0]: row for row in before
    }
    with HamiltonianDB(out) as db:
        assert db.failures() == {}


@pytest.mark.parametrize("shard", ["2/2", "1/1", "x", "3", "-1/2", "0/0", "1/2/3"])
def test_cli_bad_shard(tmp_path, shard):
    args = ["data", "generate", str(tmp_path / "o.db"), "--molecule", "H2", "--shard", shard]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "Invalid value for '--shard'" in result.output
    assert not (tmp_path / "o.db").exists()


def test_cli_unknown_molecule(tmp_path):
    result = CliRunner().invoke(
        app, ["data", "generate", str(tmp_path / "o.db"), "--molecule", "water"]
    )
    assert result.exit_code == 1
    assert "error: unknown ASE molecule name 'water'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("engine", ["gpu4pyscf", "cuda"])
def test_cli_engine_without_gpu4pyscf_is_refused_before_any_work(tmp_path, engine):
    try:
        import gpu4pyscf  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gpu4pyscf is installed here (the GPU check runs it)")
    out = tmp_path / "o.db"
    args = ["data", "generate", str(out), "--molecule", "H2", "--engine", engine]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    expected = "gpu4pyscf-cuda12x" if engine == "gpu4pyscf" else "use one of pyscf, gpu4pyscf"
    assert expected in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_gpu_labels_are_never_mixed_with_cpu_labels(tmp_path):
    with HamiltonianDB(tmp_path / "o.db", "a") as db:
        db.set_recipe(Recipe().as_meta())
        with pytest.raises(DataError, match="differs in engine"):
            db.set_recipe(Recipe().as_meta("gpu4pyscf"))
