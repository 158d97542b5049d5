import numpy as np
import pytest

from deqh_core.ao.basis import AOLayout, atomic_number, element_shells, mole
from deqh_core.util.errors import BasisError
from tests.molecules import CH3SCL, METHANOL


@pytest.mark.parametrize(
    ("basis", "molecule"),
    [("def2-svp", METHANOL), ("6-31g(d)", CH3SCL), ("def2-tzvp", CH3SCL), ("cc-pvdz", CH3SCL)],
)
def test_ao_counts_match_pyscf(basis, molecule):
    z, pos = molecule
    mol = mole(z, pos, basis)
    layout = AOLayout(basis, z)
    slices = mol.aoslice_by_atom()
    assert [layout.n_ao(int(el)) for el in z] == list(slices[:, 3] - slices[:, 2])
    # the shells' angular momenta are PySCF's, in PySCF's AO order
    ao_loc = mol.ao_loc_nr()
    for atom, el in enumerate(z):
        ours = [l for l in element_shells(basis, int(el)) for _ in range(2 * l + 1)]
        pyscf_ls = []
        for ib in range(*slices[atom, :2]):
            pyscf_ls += [mol.bas_angular(ib)] * (ao_loc[ib + 1] - ao_loc[ib])
        assert ours == pyscf_ls


def test_def2svp_layout_is_the_qh9_one():
    layout = AOLayout("def2-svp", "H C N O F".split())
    assert layout.shells[1] == (0, 0, 1)
    assert all(layout.shells[z] == (0, 0, 0, 1, 1, 2) for z in (6, 7, 8, 9))
    assert str(layout.irreps) == "3x0e+2x1o+1x2e" and layout.width == 14


def test_other_basis_and_elements():
    layout = AOLayout("def2-tzvp", ["H", "S", "Cl"])
    assert layout.n_ao(17) == 37  # Cl def2-TZVP: 5s5p2d1f
    assert "1x3o" in str(layout.irreps)


def test_unknown_element_for_basis_is_a_clear_error():
    with pytest.raises(BasisError, match=r"Kr.*6-31g|6-31g.*Kr"):
        AOLayout("6-31g", ["H", "Kr"])
    with pytest.raises(BasisError, match="unknown element symbol"):
        atomic_number("Xx")
    layout = AOLayout("def2-svp", ["H", "O"])
    with pytest.raises(BasisError, match=r"C \(Z=6\) is not in this AO layout"):
        layout.n_ao(6)


def test_slot_tables_fill_each_slot_with_its_own_l():
    layout = AOLayout("def2-svp", ["H", "C"])
    ao, _ = layout.slot_tables("e3nn")
    # H fills s slots 0,1 and the first p slot (3..5); never the third s, the second p, or d
    assert np.array_equal(ao[1] >= 0, np.isin(np.arange(14), [0, 1, 3, 4, 5]))
    assert np.array_equal(ao[6], np.arange(14))
