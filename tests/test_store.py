"""The native QH9-schema store, checked against PySCF labels."""

import sqlite3

import numpy as np
import pytest
import scipy.linalg
from pyscf import dft

from deqh_core.ao.basis import mole
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.md17 import open_source
from deqh_core.data.store import BOHR_IN_ANGSTROM, HamiltonianDB, MoleculeRecord
from deqh_core.util.errors import DataError
from tests.molecules import METHANOL, WATER


@pytest.fixture(scope="module")
def labels():
    """Converged LDA Fock matrices of water and methanol (def2-SVP), with PySCF's results."""
    out = []
    for z, pos in (WATER, METHANOL):
        mf = dft.RKS(mole(z, pos, "def2-svp"), xc="lda,vwn").run(conv_tol=1e-11)
        out.append((z, pos, mf.get_fock(), mf.get_ovlp(), mf.mo_energy, mf.e_tot))
    return out


def _qh9_file(path, labels, names=("id", "N", "Z", "pos", "Ham")):
    """A file the way QH9's generator writes it: five columns, read by position."""
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE data ({', '.join(names)})")
    for i, (z, pos, h, *_) in enumerate(labels):
        con.execute(
            "INSERT INTO data VALUES (?, ?, ?, ?, ?)",
            (i, len(z), z.astype(np.int32).tobytes(), pos.tobytes(), h.tobytes()),
        )
    con.commit()
    con.close()


@pytest.mark.parametrize("names", [("id", "N", "Z", "pos", "Ham"), ("a", "b", "c", "d", "e")])
def test_qh9_file_reproduces_pyscf_orbital_energies(tmp_path, labels, names):
    path = tmp_path / "qh9.db"
    _qh9_file(path, labels, names)
    db = open_source(path)
    assert len(db) == 2 and db.ids() == [0, 1] and db.recipe is None
    for record, (z, pos, _, s, mo_energy, _) in zip(db, labels):
        np.testing.assert_array_equal(record.atomic_numbers, z)
        np.testing.assert_array_equal(record.positions, pos)
        overlap = mole(record.atomic_numbers, record.positions, "def2-svp").intor("int1e_ovlp")
        np.testing.assert_allclose(overlap, s, atol=1e-12)
        eps = scipy.linalg.eigh(record.hamiltonian, overlap, eigvals_only=True)
        # PySCF's mo_energy comes from the Fock matrix of the previous cycle: agree to ~conv_tol
        np.testing.assert_allclose(eps, mo_energy, atol=1e-6)


def test_our_files_round_trip_with_extras(tmp_path, labels):
    path = tmp_path / "ours.db"
    recipe = {"xc": "lda,vwn", "basis": "def2-svp"}
    with HamiltonianDB(path, "a") as db:
        db.set_recipe(recipe)
        for i, (z, pos, h, s, _, e) in enumerate(labels):
            db.write(MoleculeRecord(10 + i, z, pos, h, s, e, f"mol{i}", 7, 0.5))
        db.record_failure(99, "mol99", "SCF not converged after 2 cycles", 2)
    db = HamiltonianDB(path)
    assert db.recipe == recipe and db.failures() == {99: "SCF not converged after 2 cycles"}
    assert db.done_ids() == {10, 11, 99} and db.elements() == [1, 6, 8]
    rec = db.get(11)
    np.testing.assert_array_equal(rec.hamiltonian, labels[1][2])
    np.testing.assert_array_equal(rec.overlap, labels[1][3])
    assert (rec.energy, rec.source, rec.n_cycles) == (labels[1][5], "mol1", 7)
    with pytest.raises(DataError, match="opened read-only"):
        db.write(rec)
    with HamiltonianDB(path, "a") as db, pytest.raises(DataError, match=r"another recipe.*xc"):
        db.set_recipe({**recipe, "xc": "b3lyp"})
    assert HamiltonianDB(path).recipe == recipe  # nothing lost


def test_raw_qh9_dynamic_file(tmp_path, labels):
    """QH9-dynamic: (id, geo_id, N, Z, pos [Bohr], ekin, epot, etot, time, Ham, converged)."""
    path = tmp_path / "dyn.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE data (id, geo_id, N, Z, pos, ekin, epot, etot, time, Ham, converged)")
    z, pos, h, *_ = labels[0]
    for geo in range(3):
        bohr = (pos / BOHR_IN_ANGSTROM).tobytes()
        row = (5, geo, 3, z.astype(np.int32).tobytes(), bohr, 0.0, 0.0, 0.0, geo, h.tobytes(), 1)
        con.execute("INSERT INTO data VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.commit()
    con.close()
    db = open_source(path)
    assert db.ids() == [1, 2, 3]
    rec = db.get(2)
    np.testing.assert_allclose(rec.positions, pos, atol=1e-12)
    np.testing.assert_array_equal(rec.hamiltonian, h)
    assert rec.source == "mol5/geo1"


def test_bad_input_names_file_and_record(tmp_path, labels):
    path = tmp_path / "bad.db"
    z, pos, h, *_ = labels[0]
    with HamiltonianDB(path, "a") as db:
        db.write(MoleculeRecord(1, z, pos, h))
        with pytest.raises(DataError, match="id 2: hamiltonian contains NaN"):
            db.write(MoleculeRecord(2, z, pos, np.full_like(h, np.nan)))
        db.write(MoleculeRecord(3, z, pos, np.eye(20)))  # wrong size for def2-SVP water
        # a NaN label that reached the file some other way
        db._db.execute(
            "INSERT INTO data (id, N, Z, pos, Ham) VALUES (4, 3, ?, ?, ?)",
            (z.astype(np.int32).tobytes(), pos.tobytes(), np.full_like(h, np.inf).tobytes()),
        )
        db._db.commit()
    data = HamiltonianDataset(path, basis="def2-svp")
    assert data[0].h_diag.shape == (3, 14, 14)
    with pytest.raises(DataError, match=r"bad.db: molecule id 3: Hamiltonian is 20x20 .* 24 AOs"):
        data[1]
    with pytest.raises(DataError, match=r"bad.db: molecule id 4: hamiltonian contains NaN or inf"):
        data[2]
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\x13" * 200)
    with pytest.raises(DataError, match=r"corrupt\.db"):
        HamiltonianDB(corrupt)


def test_dataset_serves_blocks_of_the_label(tmp_path, labels):
    path = tmp_path / "ours.db"
    with HamiltonianDB(path, "a") as db:
        db.set_recipe({"basis": "def2-svp"})
        for i, (z, pos, h, *_) in enumerate(labels):
            db.write(MoleculeRecord(i, z, pos, h))
    data = HamiltonianDataset(path)
    assert str(data.layout.irreps) == "3x0e+2x1o+1x2e"
    item = data[1]
    assert item.h_off.shape == (30, 14, 14) and item.s_diag.shape == (6, 14, 14)
    with pytest.raises(DataError, match=r"labels are in basis 'def2-svp', not the requested"):
        HamiltonianDataset(path, basis="sto-3g")
