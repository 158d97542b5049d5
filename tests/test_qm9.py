"""`deqh data qh9`: QM9 geometries from qm9pack, the QH9-stable splits and labels.

The shared file ``qh9_stable_small.db`` (next to the repository, in ``shared/data``; or
``$DEQH_QH9_SMALL``) holds every QH9-stable-id train and val molecule with at most 10 atoms,
labelled with QH9's recipe: it is the independent reference for the split and the labels.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data import qm9
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.qm9 import parse_ids, qm9_table, read_qm9_csv, select_ids
from deqh_core.data.splits import QH9_STABLE_SIZE, qh9_stable_id_split
from deqh_core.data.store import HamiltonianDB, MoleculeRecord
from deqh_core.data.xyz import read_xyz
from deqh_core.training.config import DataConfig
from deqh_core.training.trainer import make_split
from deqh_core.util.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(
    os.environ.get("DEQH_QH9_SMALL", ROOT.parent / "shared" / "data" / "qh9_stable_small.db")
)
HAVE_QM9PACK = importlib.util.find_spec("qm9pack") is not None
needs_qm9pack = pytest.mark.skipif(not HAVE_QM9PACK, reason="pip install 'deqh[qm9]'")
needs_shared = pytest.mark.skipif(not SHARED.is_file(), reason=f"no {SHARED}")


@pytest.fixture(scope="module")
def table():
    if not HAVE_QM9PACK:
        pytest.skip("qm9pack is not installed (pip install 'deqh[qm9]')")
    return qm9_table()


@pytest.fixture(scope="module")
def shared():
    if not SHARED.is_file():
        pytest.skip(f"no shared QH9-stable file at {SHARED}")
    with HamiltonianDB(SHARED) as db:
        yield db


def test_table_is_qh9_stable_in_order(table):
    assert len(table) == QH9_STABLE_SIZE
    assert table.gdb[0] == 1 and (np.diff(table.gdb) > 0).all()
    # QM9's first molecules: CH4, NH3, H2O (gdb 1-3)
    for qh9_id, z in ((0, [6, 1, 1, 1, 1]), (1, [7, 1, 1, 1]), (2, [8, 1, 1])):
        np.testing.assert_array_equal(table.geometry(qh9_id)[0], z)
    assert table.source(2) == "qm9:3 O"
    assert table.n_atoms.min() == 3 and table.n_atoms.max() == 29


def test_split_sizes_and_partition(table):
    parts = [select_ids(table.n_atoms, part=p) for p in ("train", "val", "test")]
    assert [len(p) for p in parts] == [104_664, 13_083, 13_084]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(QH9_STABLE_SIZE))
    ood = [select_ids(table.n_atoms, "stable-ood", p) for p in ("train", "val", "test")]
    assert table.n_atoms[ood[0]].max() == 20 and table.n_atoms[ood[2]].min() == 23
    assert set(table.n_atoms[ood[1]]) == {21, 22}
    assert sum(map(len, ood)) == QH9_STABLE_SIZE


@needs_shared
def test_small_parts_are_exactly_the_shared_file(table, shared, tmp_path):
    """train/val/test with <= 10 atoms partition every such molecule, and train + val is the
    shared file's id set, made independently."""
    parts = [select_ids(table.n_atoms, part=p, max_atoms=10) for p in ("train", "val", "test")]
    small = np.flatnonzero(table.n_atoms <= 10)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), small)
    assert np.union1d(parts[0], parts[1]).tolist() == shared.ids()
    assert len(shared.ids()) == 693
    # the CLI lists the test part: exactly the small molecules the shared file left out
    out_db = tmp_path / "x.db"
    args = ["data", "qh9", str(out_db), "--part", "test", "--max-atoms", "10", "--list"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    listed = [int(line) for line in out.stdout.split()]
    assert listed == sorted(set(small) - set(shared.ids())) == parts[2].tolist()
    assert not out_db.exists()  # --list computes and writes nothing


@needs_shared
def test_geometries_are_those_of_the_shared_file(table, shared):
    ids = shared.ids()
    for qh9_id in ids[:3] + ids[len(ids) // 2 :: 150] + ids[-2:]:
        record = shared.get(qh9_id)
        z, pos = table.geometry(qh9_id)
        np.testing.assert_array_equal(z, record.atomic_numbers)
        np.testing.assert_array_equal(pos, record.positions)
        assert table.source(qh9_id) == record.source


@needs_qm9pack
@needs_shared
def test_labels_equal_the_shared_file(tmp_path, shared):
    # ids 1 (NH3) and 2 (H2O) are in the train part: labelling them is allowed while developing
    out = tmp_path / "qh9.db"
    args = ["data", "qh9", str(out), "--ids", "1-2", "--part", "train", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2, failed 0" in " ".join(result.stdout.split())
    with HamiltonianDB(out) as db:
        # the same recipe; the PySCF release may be newer than the shared file's (the labels
        # must still agree, below)
        def recipe(db):
            return {k: v for k, v in db.recipe.items() if k != "pyscf_version"}

        assert db.ids() == [1, 2] and recipe(db) == recipe(shared)
        for qh9_id in (1, 2):
            mine, ref = db.get(qh9_id), shared.get(qh9_id)
            assert mine.source == ref.source
            np.testing.assert_array_equal(mine.positions, ref.positions)
            np.testing.assert_allclose(mine.hamiltonian, ref.hamiltonian, rtol=0, atol=1e-8)
    again = CliRunner().invoke(app, args)  # resumes by id: nothing left to do
    assert "wrote 0, failed 0, skipped 2" in " ".join(again.stdout.split())


@needs_qm9pack
def test_list_selects_ids_shards_and_limits():
    run = CliRunner().invoke
    args = ["data", "qh9", "--ids", "0-30,100", "--part", "train", "--shard", "1/4", "--list"]
    out = run(app, args)
    assert out.exit_code == 0, out.output
    ids = [int(x) for x in out.stdout.split()]
    every = qh9_stable_id_split(np.arange(QH9_STABLE_SIZE))
    expect = [i for i in [*range(31), 100] if i in set(every.train) and i % 4 == 1]
    assert ids == expect
    out = run(app, ["data", "qh9", "--part", "val", "--limit", "3", "--list"])
    assert [int(x) for x in out.stdout.split()] == every.val[:3]
    out = run(app, ["data", "qh9", "--ids", "130831", "--list"])
    assert out.exit_code == 1 and "130831 is not a QH9-stable id" in out.output
    out = run(app, ["data", "qh9", "--part", "val"])
    assert out.exit_code == 1 and "give OUT.db" in out.output


def test_parse_ids():
    assert parse_ids("7, 0-3,5,2").tolist() == [0, 1, 2, 3, 5, 7]
    for bad in ("3-1", "a", "1;2", ""):
        with pytest.raises(DataError, match="--ids"):
            parse_ids(bad)


def _csv(path, rows):
    header = "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,HOMO_au"
    lines = [header] + [
        f'"f.xyz",{i},"{smi}","x",{n},"[]","{el}","{xyz}",-0.3' for i, smi, n, el, xyz in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_reads_mathematica_and_e_exponents(tmp_path):
    water = "[[1.2*^-5,0.5,-3*^2],[1E-6,0.25,2.5e+1],[0.0,1.,-1.5*^0]]"
    rows = [(3, "O", 3, "['O','H','H']", water), (5, "C#N", 2, "['C', 'N']", "[[0,0,0],[1.1,0,0]]")]
    table = read_qm9_csv([_csv(tmp_path / "a.csv", rows)], expected=2)
    np.testing.assert_array_equal(
        table.positions[:3], [[1.2e-5, 0.5, -300.0], [1e-6, 0.25, 25.0], [0.0, 1.0, -1.5]]
    )
    assert table.atomic_numbers.tolist() == [8, 1, 1, 6, 7]
    assert table.gdb.tolist() == [3, 5] and table.source(1) == "qm9:5 C#N"


def test_bad_csv_names_file_and_line(tmp_path):
    ok = (1, "C", 1, "['C']", "[[0,0,0]]")
    cases = [
        ([ok, (1, "N", 1, "['N']", "[[0,0,0]]")], r"b\.csv:3: gdb index 1 after 1"),
        ([ok, (2, "N", 2, "['N']", "[[0,0,0]]")], r"b\.csv:3: gdb 2: N_atoms = 2 but 1 Elements"),
        ([ok, (2, "N", 1, "['N']", "[[0,x,0]]")], r"b\.csv:3: bad coordinate 'x'"),
        ([ok, (2, "N", 1, "['Qq']", "[[0,0,0]]")], r"b\.csv:3: unknown element 'Qq'"),
    ]
    for rows, message in cases:
        with pytest.raises(DataError, match=message):
            read_qm9_csv([_csv(tmp_path / "b.csv", rows)], expected=None)
    with pytest.raises(DataError, match=r"1 molecules, but QH9-stable has 130,831"):
        read_qm9_csv([_csv(tmp_path / "b.csv", [ok])])


def test_missing_qm9pack_says_what_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        qm9.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "qm9pack" else find_spec(name, *a),
    )
    with pytest.raises(DataError, match=r"qm9pack .* not installed: pip install 'deqh\[qm9\]'"):
        qm9.qm9pack_files()
    out = CliRunner().invoke(app, ["data", "qh9", "--list"])
    assert out.exit_code == 1 and "pip install 'deqh[qm9]'" in out.output


@needs_shared
def test_subset_file_splits_by_qh9_stable_id_membership(shared):
    data = HamiltonianDataset(SHARED)
    split = make_split(data, DataConfig(split="qh9_stable_id"))
    canonical = qh9_stable_id_split(np.arange(QH9_STABLE_SIZE))
    assert set(split.train) <= set(canonical.train) and set(split.val) <= set(canonical.val)
    assert split.test == [] and len(split.train) + len(split.val) == 693
    assert len(split.val) > 0
    # what the membership split avoids: permuting the subset's own ids mixes QH9's parts
    own = make_split(data, DataConfig(split="random", sizes="0.8/0.1/0.1", split_seed=43))
    assert not set(own.train) <= set(canonical.train)
    ood = make_split(data, DataConfig(split="qh9_stable_ood"))
    assert len(ood.train) == 693  # all have <= 20 atoms


def test_qh9_split_refuses_ids_that_are_not_qh9_stable_ids(tmp_path):
    path = tmp_path / "not_qh9.db"
    z, pos = np.array([8, 1, 1]), np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0.0]])
    with HamiltonianDB(path, "a") as db:
        db.set_recipe({"basis": "def2-svp"})
        db.write(MoleculeRecord(QH9_STABLE_SIZE, z, pos, np.eye(24)))
    with pytest.raises(DataError, match="id 130831 is not a QH9-stable id"):
        make_split(HamiltonianDataset(path), DataConfig(split="qh9_stable_id"))


@needs_qm9pack
def test_xyz_writes_the_selected_geometries(tmp_path, table):
    out = tmp_path / "val.xyz"
    args = ["data", "qh9", "--part", "val", "--ids", "20-50", "--max-atoms", "12", "--xyz", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    frames = read_xyz(out)
    every = qh9_stable_id_split(np.arange(QH9_STABLE_SIZE))
    expect = [i for i in range(20, 51) if i in set(every.val) and table.n_atoms[i] <= 12]
    assert [int(f.comment.split()[0].split(":")[1]) for f in frames] == expect and expect
    for qh9_id, frame in zip(expect, frames):
        z, pos = table.geometry(qh9_id)
        np.testing.assert_array_equal(frame.atomic_numbers, z)
        np.testing.assert_allclose(frame.positions, pos, rtol=0, atol=5e-9)
        assert table.source(qh9_id) in frame.comment
