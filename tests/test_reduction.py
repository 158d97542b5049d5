"""Diagonal reduction against real oracles: PySCF matrices, e3nn Wigner-D, quadrature."""

from functools import cache
from math import gamma

import numpy as np
import pytest
import torch
from e3nn import o3
from pyscf import dft, scf
from torch_geometric.data import Batch

from deqh_core.ao import reduction
from deqh_core.ao.basis import AOLayout, mole
from deqh_core.ao.blocks import block_data, split
from deqh_core.ao.convention import ao_permutation, model_rotation, to_model_frame
from deqh_core.ao.reduction import (
    AUX_SHELLS,
    DiagonalReduction,
    aux_exponents,
    cache_path,
    onsite_overlap_table,
)
from tests.molecules import CH3SCL, METHANOL, WATER

MODES = ["irrep", "channel", "none"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Tables go to a private directory, never the user's ~/.cache."""
    monkeypatch.setenv("DEQH_CACHE", str(tmp_path_factory.getbasetemp() / "deqh-cache"))
    onsite_overlap_table.cache_clear()
    yield
    onsite_overlap_table.cache_clear()


class float64_default:
    """e3nn builds part of D in the default dtype: float64 D needs a float64 default."""

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def _matrices(z, pos, basis, kind):
    key = (np.asarray(z, np.int64).tobytes(), np.asarray(pos, np.float64).tobytes())
    return _matrix(*key, basis, kind)


@cache  # PySCF matrices are shared between tests (read-only)
def _matrix(z: bytes, pos: bytes, basis: str, kind: str) -> np.ndarray:
    mol = mole(np.frombuffer(z, np.int64), np.frombuffer(pos).reshape(-1, 3), basis)
    if kind == "S":
        matrix = mol.intor("int1e_ovlp")
    elif kind == "hcore":
        matrix = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    else:  # Fock of the minao guess density: real, with two-electron terms
        mf = scf.RHF(mol)
        matrix = mf.get_fock(dm=mf.get_init_guess(key="minao"))
    matrix.setflags(write=False)
    return matrix


def _diag(molecules, basis, kind, layout=None):
    """On-site blocks ``[n_atoms, A, A]`` (model order) and Z of a batch of molecules."""
    layout = layout or AOLayout(basis, np.concatenate([z for z, _ in molecules]))
    items, flat = [], []
    for z, pos in molecules:
        items.append(block_data(layout, z))
        flat.append(torch.tensor(_matrices(z, pos, basis, kind)).reshape(-1))
    diag, _ = split(torch.cat(flat), Batch.from_data_list(items))
    return layout, diag, torch.from_numpy(np.concatenate([z for z, _ in molecules]))


def _rotation(seed, proper):
    with float64_default():
        torch.manual_seed(seed)
        rot = o3.rand_matrix()
    return rot if proper else -rot


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "improper"])
@pytest.mark.parametrize(
    "basis, molecules, kinds",
    [
        ("def2-svp", [WATER, METHANOL], ["S", "hcore", "fock"]),
        ("def2-tzvp", [CH3SCL], ["S", "hcore"]),  # S and Cl carry f shells
    ],
    ids=["svp", "tzvp"],
)
def test_features_rotate_with_the_wigner_d(basis, molecules, kinds, proper):
    rot = _rotation(7, proper)
    rotated = [(z, pos @ rot.numpy().T) for z, pos in molecules]
    layout = AOLayout(basis, np.concatenate([z for z, _ in molecules]))
    modules = {mode: DiagonalReduction(layout, mode) for mode in MODES}
    with float64_default():
        d_aux = DiagonalReduction.irreps_out.D_from_matrix(model_rotation(rot))
    for kind in kinds:
        _, diag, z = _diag(molecules, basis, kind, layout)
        _, diag_rot, _ = _diag(rotated, basis, kind, layout)
        for mode in MODES:
            feat, feat_rot = modules[mode](diag, z), modules[mode](diag_rot, z)
            assert feat.dtype == torch.float64
            torch.testing.assert_close(feat_rot, feat @ d_aux.T, atol=1e-6, rtol=0)
            if kind != "S":  # a non-trivial check: the l > 0 features do move
                assert (feat_rot[:, 16:] - feat[:, 16:]).abs().max() > 1e-3


def test_table_matches_quadrature_with_independent_aux_functions():
    """Q̃ from int3c1e vs. a Becke-grid quadrature whose auxiliary functions are built here from
    e3nn's solid harmonics in the model frame with the closed-form Gaussian normalisation; the
    AOs are PySCF's, moved to model order. Checks integrals, normalisation and all orders."""
    with float64_default():
        for basis, z in [("def2-svp", 8), ("def2-tzvp", 17)]:  # s, p, d; and f
            mol = mole([z], np.zeros((1, 3)), basis)
            grid = dft.gen_grid.Grids(mol)
            grid.level = 3
            grid.build()
            index, sign = ao_permutation(AOLayout(basis, [z]), [z], "pyscf", "e3nn")
            ao = mol.eval_gto("GTOval_sph", grid.coords)[:, index] * sign
            r = torch.from_numpy(grid.coords)  # bohr
            aux = []
            for l, *_ in AUX_SHELLS:
                solid = o3.spherical_harmonics(
                    l, to_model_frame(r), normalize=False, normalization="integral"
                )
                for g in aux_exponents(l):
                    norm = (gamma(l + 1.5) / (2 * (2 * g) ** (l + 1.5))) ** -0.5
                    aux.append(norm * torch.exp(-g * (r * r).sum(-1))[:, None] * solid)
            aux = torch.cat(aux, 1).numpy()
            n = ao.shape[1]
            pair = (grid.weights[:, None, None] * ao[:, :, None] * ao[:, None, :]).reshape(
                -1, n * n
            )
            expect = (pair.T @ aux).reshape(n, n, 60)
            table = onsite_overlap_table(basis, z)
            assert table.shape == (n, n, 60) and table.dtype == np.float64
            np.testing.assert_allclose(table, expect, atol=1e-7, rtol=0)


def test_unnormalised_forward_is_the_contraction_with_the_table():
    layout, diag, z = _diag([METHANOL], "def2-svp", "hcore")
    feat = DiagonalReduction(layout, normalize=False)(diag, z)
    for i, el in enumerate(z.tolist()):
        n = layout.n_ao(el)
        ao, _ = layout.slot_tables("e3nn")
        filled = ao[el] >= 0
        block = np.zeros((n, n))
        block[np.ix_(ao[el][filled], ao[el][filled])] = diag[i][filled][:, filled].numpy()
        expect = np.einsum("ab,abk->k", block, onsite_overlap_table("def2-svp", el))
        np.testing.assert_allclose(feat[i].numpy(), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_features_tell_h_from_s_and_follow_each_block(mode):
    layout, s, z = _diag([WATER, METHANOL], "def2-svp", "S")
    _, h, _ = _diag([WATER, METHANOL], "def2-svp", "fock", layout)
    module = DiagonalReduction(layout, mode)
    feat_s, feat_h = module(s, z), module(h, z)
    assert (feat_s.abs().sum(1) > 0).all() and (feat_h.abs().sum(1) > 0).all()
    assert ((feat_s - feat_h).abs().amax(1) > 1e-2).all()
    # S_AA depends on the element only: equal features for equal elements, zero for l > 0
    torch.testing.assert_close(feat_s[1], feat_s[2])
    assert feat_s[:, 16:].abs().max() < 1e-8
    # change atom 4's block (methanol's O): its features move, nobody else's
    changed = h.clone()
    bump = torch.randn(14, 14, dtype=h.dtype, generator=torch.Generator().manual_seed(0))
    changed[4] += 0.05 * (bump + bump.T)
    moved = (module(changed, z) - feat_h).abs().amax(1)
    assert moved[4] > 1e-3 and (moved[torch.arange(len(z)) != 4] == 0).all()


def test_every_element_gets_nonzero_features():
    layout = AOLayout("def2-tzvp", [1, 6, 7, 8, 9, 16, 17])
    module = DiagonalReduction(layout)
    identity = torch.eye(layout.width, dtype=torch.float64).expand(len(layout.elements), -1, -1)
    z = torch.tensor(layout.elements)
    ao, _ = layout.slot_tables("e3nn")
    mask = torch.from_numpy(ao[list(layout.elements)] >= 0).double()
    feat = module(identity * mask[:, :, None] * mask[:, None, :], z)
    assert (feat[:, :16].abs().amax(1) > 0.1).all()
    for el in layout.elements:
        assert np.abs(onsite_overlap_table("def2-tzvp", el)).max() > 0.1


def test_zero_input_and_padding_give_no_nan():
    layout, h, z = _diag([WATER], "def2-svp", "hcore")
    for mode in MODES:
        module = DiagonalReduction(layout, mode)
        zero = torch.zeros_like(h, requires_grad=True)
        feat = module(zero, z)
        assert torch.equal(feat, torch.zeros_like(feat))
        feat.sum().backward()
        assert torch.isfinite(zero.grad).all()
        # garbage in the slots an atom (here H) does not fill is ignored
        pad = torch.from_numpy(layout.slot_tables("e3nn")[0][z.numpy()] < 0)
        noisy = h + (pad[:, :, None] | pad[:, None, :]).double()
        torch.testing.assert_close(module(noisy, z), module(h, z), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["S", "hcore"])
def test_float32_features_of_an_atom_do_not_depend_on_its_batch_mates(kind):
    """l > 0 features are small differences of large on-site entries (exactly 0 for S), and the
    normalisation divides them by their own size: computed in float32, their rounding depended
    on how the BLAS blocked the batch and came out as ~1e-2 feature changes."""
    layout, h, z = _diag([WATER, *[METHANOL] * 20], "def2-svp", kind)
    module = DiagonalReduction(layout).to(torch.float32)
    together = module(h.float(), z)
    alone = module(h[:3].float(), z[:3])
    torch.testing.assert_close(together[:3], alone, atol=1e-6, rtol=0)


def test_module_follows_dtype_and_rejects_unknown_elements():
    layout, h, z = _diag([WATER], "def2-svp", "hcore")
    module = DiagonalReduction(layout)
    reference = module(h, z)
    module = module.to(torch.float32)
    assert module.table.dtype == torch.float32 and module.element_row.dtype == torch.long
    out = module(h.float(), z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.float(), atol=1e-5, rtol=1e-5)
    assert module(h, z).dtype == torch.float64  # the input's dtype wins
    with pytest.raises(ValueError, match="not in the layout"):
        module(h, torch.tensor([8, 1, 6]))
    with pytest.raises(ValueError, match="normalize"):
        DiagonalReduction(layout, "layer")


def test_disk_cache_is_read_and_a_corrupt_file_is_recomputed():
    table = onsite_overlap_table("def2-svp", 1)
    path = cache_path("def2-svp", 1)
    assert path.is_file() and str(path.parent).endswith("deqh-cache")

    # the second call reads the file: plant an intact file with other values and get them back
    planted = np.asarray(table) * 2
    reduction._write(path, planted)
    onsite_overlap_table.cache_clear()
    np.testing.assert_array_equal(onsite_overlap_table("def2-svp", 1), planted)

    # a truncated file, a table that fails its checksum and one of the wrong shape are
    # recomputed (and the file rewritten)
    raw = path.read_bytes()
    wrong_shape = planted[:2]
    for corrupt in ("truncated", "checksum", "shape"):
        if corrupt == "truncated":
            path.write_bytes(raw[: len(raw) // 2])
        else:
            with open(path, "wb") as f:
                bad = planted if corrupt == "checksum" else wrong_shape
                np.savez(f, table=bad, sha256=np.array(reduction._checksum(wrong_shape)))
        onsite_overlap_table.cache_clear()
        np.testing.assert_array_equal(onsite_overlap_table("def2-svp", 1), table)
        onsite_overlap_table.cache_clear()
        np.testing.assert_array_equal(onsite_overlap_table("def2-svp", 1), table)


def test_cache_names_are_filesystem_safe_and_distinct():
    names = {cache_path(b, 8).name for b in ["6-31G(d)", "6-31g*", "def2-svp", "DEF2-SVP"]}
    assert len(names) == 3  # only the case differs between the last two
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-+Z") for n in names)
