"""MD17Reader and open_source against matrices PySCF computes, written in ORCA order."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest
from ase import Atoms
from ase.db import connect
from pyscf import gto, scf

from deqh_core.data.md17 import MD17Reader, open_source
from deqh_core.data.store import HamiltonianDB, MoleculeRecord
from deqh_core.util.errors import DataError

WATER = ("OHH", [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])
METHANOL = (
    "COHHHH",
    [
        [-0.046, 0.663, 0.0],
        [-0.046, -0.756, 0.0],
        [-0.980, 0.976, 0.0],
        [0.432, 1.077, 0.890],
        [0.432, 1.077, -0.890],
        [0.878, -1.037, 0.0],
    ],
)

# ORCA's real spherical AOs, stated here independently of deqh_core.ao.convention:
# p as (pz, px, py); d as m = 0, +1, -1, +2, -2, i.e. (z², xz, yz, x²-y², xy); f as
# m = 0, +1, -1, +2, -2, +3, -3 with the |m| = 3 functions of opposite sign to PySCF's.
# Values: PySCF's label suffix of each ORCA function, in ORCA order, and the sign.
ORCA_SHELL = {
    "s": [("s", 1)],
    "p": [("pz", 1), ("px", 1), ("py", 1)],
    "d": [("dz^2", 1), ("dxz", 1), ("dyz", 1), ("dx2-y2", 1), ("dxy", 1)],
    "f": [("f+0", 1), ("f+1", 1), ("f-1", 1), ("f+2", 1), ("f-2", 1), ("f+3", -1), ("f-3", -1)],
}


def pyscf_to_orca(mol: gto.Mole) -> tuple[np.ndarray, np.ndarray]:
    """``(index, sign)``: ORCA AO ``i`` is ``sign[i] * pyscf_ao[index[i]]``, from AO labels."""
    # PySCF labels an AO (atom, symbol, shell, component), e.g. (0, "O", "2p", "x").
    labels = [(a, sh, c) for a, _, sh, c in mol.ao_labels(fmt=False)]
    where = {(a, sh + c): i for i, (a, sh, c) in enumerate(labels)}
    index, sign = [], []
    for atom, shell in dict.fromkeys((a, sh) for a, sh, _ in labels):  # shells, in order
        n, l = shell[:-1], shell[-1]
        for comp, sg in ORCA_SHELL[l]:
            index.append(where[(atom, n + comp)])
            sign.append(sg)
    return np.array(index), np.array(sign)


def to_orca(matrix: np.ndarray, mol: gto.Mole) -> np.ndarray:
    index, sign = pyscf_to_orca(mol)
    return matrix[np.ix_(index, index)] * np.outer(sign, sign)


def make_mol(spec, basis="def2-svp") -> gto.Mole:
    symbols, pos = spec
    return gto.M(atom=list(zip(symbols, pos)), basis=basis, unit="Angstrom", verbose=0)


def write_db(path, rows: list[tuple[tuple, dict]]) -> None:
    db = connect(str(path))
    for (symbols, pos), data in rows:
        db.write(Atoms(symbols, positions=pos), data=data)


@pytest.fixture(scope="module")
def labelled():
    """Water with its converged RHF Fock matrix, methanol with its core Hamiltonian."""
    water = make_mol(WATER)
    mf = scf.RHF(water)
    mf.conv_tol = 1e-9
    mf.kernel()
    methanol = make_mol(METHANOL)
    h_core = methanol.intor("int1e_kin") + methanol.intor("int1e_nuc")
    return [
        (WATER, water, mf.get_fock(), water.intor("int1e_ovlp")),
        (METHANOL, methanol, h_core, methanol.intor("int1e_ovlp")),
    ]


@pytest.fixture
def md17_file(tmp_path, labelled):
    path = tmp_path / "md17.db"
    write_db(
        path,
        [
            (spec, {"hamiltonian": to_orca(h, mol), "overlap": to_orca(s, mol)})
            for spec, mol, h, s in labelled
        ],
    )
    return path


def test_reads_pyscf_order(md17_file, labelled):
    before = md17_file.read_bytes()
    reader = MD17Reader(md17_file)
    assert len(reader) == 2
    assert reader.ids() == [1, 2]
    assert reader.done_ids() == {1, 2}
    assert reader.failures() == {}
    assert reader.recipe["ao_order"] == "pyscf"
    assert reader.recipe["basis"] == "def2-svp"
    records = list(reader)
    assert [r.id for r in records] == [1, 2]
    for record, (spec, mol, h, s) in zip(records, labelled):
        assert isinstance(record, MoleculeRecord)
        np.testing.assert_array_equal(record.atomic_numbers, mol.atom_charges())
        np.testing.assert_allclose(record.positions, spec[1], atol=1e-12)
        np.testing.assert_allclose(record.hamiltonian, h, atol=1e-12, rtol=0)
        np.testing.assert_allclose(record.overlap, s, atol=1e-12, rtol=0)
        # the overlap also matches PySCF's integral at the geometry read back
        read_mol = gto.M(
            atom=list(zip(record.atomic_numbers.tolist(), record.positions)),
            basis="def2-svp",
            unit="Angstrom",
            verbose=0,
        )
        np.testing.assert_allclose(record.overlap, read_mol.intor("int1e_ovlp"), atol=1e-12)
    got = reader.get(2)
    np.testing.assert_array_equal(got.hamiltonian, records[1].hamiltonian)
    assert md17_file.read_bytes() == before  # reading never writes
    assert sorted(p.name for p in md17_file.parent.iterdir()) == ["md17.db"]


def test_orca_order_explicit_p_and_d(tmp_path):
    """A diagonal matrix holding a code per ORCA function lands on the PySCF function named by
    the explicit ORCA table: O in def2-SVP is 1s 2s 3s | 2p 3p | 3d, H is 1s 2s | 2p."""
    orca_o = ["1s", "2s", "3s", "2pz", "2px", "2py", "3pz", "3px", "3py"]
    orca_o += ["3dz^2", "3dxz", "3dyz", "3dx2-y2", "3dxy"]
    orca_h = ["1s", "2s", "2pz", "2px", "2py"]
    orca_labels = [(0, x) for x in orca_o] + [(a, x) for a in (1, 2) for x in orca_h]
    mol = make_mol(WATER)
    pyscf_labels = [(a, s + c) for a, _, s, c in mol.ao_labels(fmt=False)]
    codes = np.arange(1.0, len(orca_labels) + 1)
    write_db(tmp_path / "w.db", [(WATER, {"hamiltonian": np.diag(codes)})])
    h = MD17Reader(tmp_path / "w.db").get(1).hamiltonian
    for code, label in zip(codes, orca_labels):
        i = pyscf_labels.index(label)
        assert h[i, i] == code, label
    assert np.count_nonzero(h - np.diag(np.diag(h))) == 0


def test_orca_f_shell_signs(tmp_path):
    """With f functions (def2-TZVP), ORCA's f(±3) carry the opposite sign."""
    mol = make_mol(WATER, basis="def2-tzvp")
    h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    s = mol.intor("int1e_ovlp")
    assert any("f+3" in lab for lab in mol.ao_labels())
    write_db(
        tmp_path / "f.db", [(WATER, {"hamiltonian": to_orca(h, mol), "overlap": to_orca(s, mol)})]
    )
    got = MD17Reader(tmp_path / "f.db", basis="def2-tzvp").get(1)
    np.testing.assert_allclose(got.hamiltonian, h, atol=1e-12, rtol=0)
    np.testing.assert_allclose(got.overlap, s, atol=1e-12, rtol=0)
    # the f(±3) sign matters: undoing only the permutation gives a different matrix
    index, _ = pyscf_to_orca(mol)
    unsigned = np.empty_like(s)
    unsigned[np.ix_(index, index)] = to_orca(s, mol)
    assert not np.allclose(unsigned, s, atol=1e-6)


def test_flattened_matrices(tmp_path, labelled):
    spec, mol, h, s = labelled[0]
    data = {"hamiltonian": to_orca(h, mol).ravel(), "overlap": to_orca(s, mol).ravel()}
    write_db(tmp_path / "flat.db", [(spec, data)])
    record = MD17Reader(tmp_path / "flat.db").get(1)
    np.testing.assert_allclose(record.hamiltonian, h, atol=1e-12, rtol=0)
    np.testing.assert_allclose(record.overlap, s, atol=1e-12, rtol=0)


def test_open_source_chooses_reader(md17_file, tmp_path):
    assert isinstance(open_source(md17_file), MD17Reader)
    qh9 = tmp_path / "qh9.db"
    with HamiltonianDB(qh9, mode="a") as db:
        z = np.array([8, 1, 1])
        db.write(MoleculeRecord(1, z, np.array(WATER[1]), np.eye(24)))
    opened = open_source(qh9)
    assert isinstance(opened, HamiltonianDB)
    assert opened.ids() == [1]
    opened.close()


def test_open_source_unknown_formats(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    with pytest.raises(DataError, match="unknown format"):
        open_source(text)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE things (a INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(DataError, match=r"unknown SQLite layout \(tables: things\)"):
        open_source(other)
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing.db")


def test_bad_files(tmp_path, md17_file):
    missing = tmp_path / "missing.db"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such file")):
        MD17Reader(missing)
    assert not missing.exists()  # ASE must not have created it
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01 definitely not sqlite" * 10)
    with pytest.raises(DataError, match=re.escape(f"{garbage}: not an SQLite file")):
        MD17Reader(garbage)
    qh9 = tmp_path / "qh9.db"
    HamiltonianDB(qh9, mode="a").close()
    with pytest.raises(DataError, match=re.escape(f"{qh9}: not an ASE database")):
        MD17Reader(qh9)
    # a damaged ASE file: header intact, pages cut off
    cut = tmp_path / "cut.db"
    cut.write_bytes(md17_file.read_bytes()[:6000])
    with pytest.raises(DataError, match=re.escape(str(cut))):
        list(MD17Reader(cut))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"overlap": np.eye(24)}, "no 'hamiltonian' in row.data"),
        ({"hamiltonian": np.eye(25)}, r"basis def2-svp has 24 AOs, so expected \(24, 24\)"),
        ({"hamiltonian": np.ones(23 * 23)}, r"expected \(24, 24\)"),
        ({"hamiltonian": np.full((24, 24), np.nan)}, "hamiltonian contains NaN or inf"),
        ({"hamiltonian": np.eye(24), "overlap": np.full((24, 24), np.inf)}, "overlap contains"),
    ],
)
def test_bad_rows(tmp_path, data, message):
    path = tmp_path / "bad.db"
    good = {"hamiltonian": np.eye(24)}
    write_db(path, [(WATER, good), (WATER, data)])
    reader = MD17Reader(path)
    reader.get(1)
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: ") + f".*{message}"):
        reader.get(2)
    with pytest.raises(DataError, match="row 2"):
        list(reader)
    with pytest.raises(DataError, match=re.escape(f"{path}: no row with id 7")):
        reader.get(7)


def test_wrong_basis_names_basis_and_sizes(md17_file):
    message = r"row 1: hamiltonian has shape \(24, 24\), but OHH in basis sto-3g has 7 AOs"
    with pytest.raises(DataError, match=message):
        MD17Reader(md17_file, basis="sto-3g").get(1)
