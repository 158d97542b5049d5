import numpy as np
import pytest
import torch
from e3nn import o3

from deqh_core.ao.basis import AOLayout, mole
from deqh_core.ao.convention import ao_permutation, convert, to_model_frame, wigner_D
from tests.molecules import CH3SCL, METHANOL, WATER

CASES = [("def2-svp", METHANOL), ("def2-svp", WATER), ("6-31g(d)", CH3SCL), ("def2-tzvp", CH3SCL)]


@pytest.mark.parametrize(("basis", "molecule"), CASES)
def test_pyscf_overlap_rotates_with_e3nn_wigner_d(basis, molecule):
    """PySCF is the oracle: S(R x) in model order == D(R) S(x) D(R)^T."""
    torch.manual_seed(0)
    z, pos = molecule
    layout = AOLayout(basis, z)
    for _ in range(3):
        rot = o3.rand_matrix(dtype=torch.float64)
        s = convert(mole(z, pos, basis).intor("int1e_ovlp"), layout, z, "pyscf", "e3nn")
        s_rot = convert(
            mole(z, pos @ rot.numpy().T, basis).intor("int1e_ovlp"), layout, z, "pyscf", "e3nn"
        )
        d = wigner_D(layout, z, rot).numpy()
        np.testing.assert_allclose(s_rot, d @ s @ d.T, atol=1e-8)


def test_p_shells_in_model_order_transform_like_model_frame_vectors():
    """A p shell in model order is (y, z, x): it rotates like to_model_frame(R v)."""
    torch.manual_seed(1)
    rot = o3.rand_matrix(dtype=torch.float64)
    layout = AOLayout("def2-svp", [1])
    d = wigner_D(layout, [1], rot)[2:, 2:]
    v = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(d @ to_model_frame(v), to_model_frame(rot @ v))


@pytest.mark.parametrize(("basis", "molecule"), CASES)
@pytest.mark.parametrize(("a", "b"), [("pyscf", "e3nn"), ("pyscf", "orca"), ("orca", "e3nn")])
def test_round_trips_are_exact(basis, molecule, a, b):
    z, pos = molecule
    layout = AOLayout(basis, z)
    s = mole(z, pos, basis).intor("int1e_ovlp")
    there = convert(s, layout, z, a, b)
    assert np.array_equal(convert(there, layout, z, b, a), s)
    t = torch.from_numpy(s)
    assert torch.equal(convert(convert(t, layout, z, a, b), layout, z, b, a), t)


def test_conversion_is_a_signed_permutation():
    z, _ = CH3SCL
    layout = AOLayout("def2-tzvp", z)
    index, sign = ao_permutation(layout, z, "pyscf", "orca")
    assert sorted(index) == list(range(len(index)))
    assert set(np.unique(sign)) <= {-1, 1}
    assert (sign == -1).any()  # Cl/S f shells: ORCA flips |m| >= 3


def test_wrong_matrix_size_is_an_error():
    z, _ = WATER
    layout = AOLayout("def2-svp", z)
    with pytest.raises(ValueError, match="does not fit the molecule's 24 AOs"):
        convert(np.eye(25), layout, z, "pyscf", "e3nn")
