"""Real QH9 files, written exactly as QH9's generation scripts do (apsw), read by deqh."""

import sqlite3

import numpy as np
import pytest
import scipy.linalg

pytest.importorskip("apsw", reason="apsw writes QH9's files (pip install 'deqh[test]')")

from deqh_core.ao.blocks import assemble, unflatten
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.md17 import open_source
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB
from deqh_core.training.config import DataConfig
from deqh_core.training.trainer import make_split
from deqh_core.util.errors import DataError
from tests.molecules import AMMONIA, WATER
from tests.qh9_files import pyscf_label, write_qh9_dynamic, write_qh9_stable

# QH9's recipe (b3lyp5 = PySCF 2.2.1's b3lyp, def2-SVP, grid 3) with a tight SCF, so that the
# orbital energies of the stored Fock matrix are PySCF's to well below 1e-6 Ha
RECIPE = Recipe(conv_tol=1e-11, conv_tol_grad=1e-7)
DYNAMIC_IDS = (np.int64(101), np.int64(7))  # molecule ids as QH9-dynamic binds them


def _frames(z, pos, n, seed):
    rng = np.random.default_rng(seed)
    return [pyscf_label(z, pos + rng.normal(0, 0.02, pos.shape), RECIPE) for _ in range(n)]


@pytest.fixture(scope="module")
def stable_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qh9") / "QH9Stable.db"
    labels = [(1, pyscf_label(*AMMONIA, RECIPE)), (2, pyscf_label(*WATER, RECIPE))]
    write_qh9_stable(path, labels)
    return path, dict(labels)


@pytest.fixture(scope="module")
def dynamic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qh9") / "QH9Dynamic.db"
    trajectories = [
        (DYNAMIC_IDS[0], _frames(*WATER, 3, 0)),
        (DYNAMIC_IDS[1], _frames(*AMMONIA, 2, 1)),
    ]
    write_qh9_dynamic(path, trajectories)
    return path, trajectories


def _full_matrices(item):
    """H and S of a dataset item, back from block form to full PySCF-order matrices."""
    h = unflatten(assemble(item.h_diag, item.h_off, item), item.n_ao)[0]
    s = unflatten(assemble(item.s_diag, item.s_off, item), item.n_ao)[0]
    return h.numpy(), s.numpy()


def _check_orbital_energies(item, label):
    h, s = _full_matrices(item)
    np.testing.assert_allclose(h, label.fock, atol=1e-12)  # the label, unchanged
    # S is computed by deqh from the stored geometry: right only if positions came out in Å
    np.testing.assert_allclose(s, label.overlap, atol=1e-10)
    eps = scipy.linalg.eigh(h, s, eigvals_only=True)
    np.testing.assert_allclose(eps, label.mo_energy, atol=1e-6)


def test_the_files_have_qh9s_layout(stable_file, dynamic_file):
    """What QH9's loader relies on: columns by position, an int64 blob as QH9-dynamic's id."""
    con = sqlite3.connect(dynamic_file[0])
    cols = [r[1] for r in con.execute("PRAGMA table_info(data)")]
    assert cols == [
        "id", "geo_id", "N", "Z", "pos", "ekin", "epot", "etot", "time", "Ham", "converged"
    ]  # fmt: skip
    row = con.execute("SELECT typeof(id), id, typeof(geo_id), typeof(pos) FROM data").fetchone()
    assert row[0] == "blob" and np.frombuffer(row[1], np.int64)[0] == 101
    assert row[2:] == ("integer", "blob")
    con = sqlite3.connect(stable_file[0])
    assert [r[1] for r in con.execute("PRAGMA table_info(data)")] == ["id", "N", "Z", "pos", "Ham"]
    assert con.execute("SELECT typeof(id) FROM data").fetchall() == [("integer",)] * 2


def test_qh9_stable_file_loads_and_matches_pyscf(stable_file):
    path, labels = stable_file
    db = open_source(path)
    assert isinstance(db, HamiltonianDB) and db.ids() == [1, 2] and db.recipe is None
    data = HamiltonianDataset(path, basis="def2-svp")
    assert [int(data[k].mol_id) for k in range(2)] == [1, 2]
    for k, qh9_id in enumerate((1, 2)):
        record = db.get(qh9_id)
        np.testing.assert_array_equal(record.atomic_numbers, labels[qh9_id].atomic_numbers)
        np.testing.assert_array_equal(record.positions, labels[qh9_id].positions)  # Å
        _check_orbital_energies(data[k], labels[qh9_id])


def test_qh9_dynamic_file_loads_in_angstrom_and_matches_pyscf(dynamic_file):
    path, trajectories = dynamic_file
    db = open_source(path)
    assert db.ids() == [1, 2, 3, 4, 5]  # one id (the row) per geometry
    frames = [(int(mol_id), geo, f) for mol_id, fs in trajectories for geo, f in enumerate(fs)]
    sources = [r.source for r in db]
    assert sources == [f"mol{mol_id}/geo{geo}" for mol_id, geo, _ in frames]
    data = HamiltonianDataset(path, basis="def2-svp")
    for k, (_, _, frame) in enumerate(frames):
        np.testing.assert_allclose(db.get(k + 1).positions, frame.positions, atol=1e-12)
        _check_orbital_energies(data[k], frame)


def test_qh9_dynamic_geometries_group_by_decoded_id(dynamic_file):
    path, _ = dynamic_file
    data = HamiltonianDataset(path, basis="def2-svp")
    water, ammonia = {1, 2, 3}, {4, 5}
    for seed in range(4):  # whole molecules: one in train, the other in val
        split = make_split(data, DataConfig(split="group", sizes="1/1/0", split_seed=seed))
        assert {frozenset(split.train), frozenset(split.val)} == {
            frozenset(water),
            frozenset(ammonia),
        }
    # every molecule's geometries divided: one to train, one to val, the rest to test
    split = make_split(data, DataConfig(split="within_group", sizes="1/1/rest"))
    for group in (water, ammonia):
        assert len(group & set(split.train)) == len(group & set(split.val)) == 1
    assert len(split.test) == 1


def test_bad_molecule_id_blob_is_named(tmp_path):
    path = tmp_path / "dyn.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE data (id, geo_id, N, Z, pos, ekin, epot, etot, time, Ham, converged)")
    z, pos = WATER
    row = (b"\x01\x02", 0, 3, z.astype(np.int32).tobytes(), pos.tobytes(), 0, 0, 0, 0, b"", 1)
    con.execute("INSERT INTO data VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.commit()
    con.close()
    with pytest.raises(DataError, match=r"dyn\.db: molecule id 1: column id holds a 2-byte blob"):
        HamiltonianDB(path).get(1)
