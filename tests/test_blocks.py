import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout, mole
from deqh_core.ao.blocks import (
    assemble,
    block_data,
    block_gather,
    flatten,
    split,
    unflatten,
)
from deqh_core.ao.convention import convert
from deqh_core.data.dataset import HamiltonianDataset
from tests.molecules import AMMONIA, CH3SCL, METHANOL, WATER


def _batch(molecules, basis, device, dtype):
    layout = AOLayout(basis, np.concatenate([z for z, _ in molecules]))
    items, mats = [], []
    for z, pos in molecules:
        items.append(block_data(layout, z))
        mol = mole(z, pos, basis)
        h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")  # a real, non-trivial matrix
        mats.append(torch.as_tensor(h, dtype=dtype, device=device))
    return layout, Batch.from_data_list(items).to(device), mats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_split_assemble_is_identity_on_a_batch(device, dtype, basis):
    molecules = [WATER, METHANOL, AMMONIA] + ([CH3SCL] if basis == "def2-tzvp" else [])
    _, batch, mats = _batch(molecules, basis, device, dtype)
    flat = flatten(mats)
    diag, off = split(flat, batch)
    n_atoms = sum(len(z) for z, _ in molecules)
    assert diag.shape[0] == n_atoms and off.shape[0] == sum(
        len(z) * (len(z) - 1) for z, _ in molecules
    )
    assert diag.dtype == dtype and diag.device.type == device.type
    assert torch.equal(assemble(diag, off, batch), flat)
    for m, back in zip(mats, unflatten(assemble(diag, off, batch), batch.n_ao)):
        assert torch.equal(m, back)


def test_blocks_are_the_model_order_submatrices(device):
    """Block (i, j) equals the slice of the model-order matrix, placed in the atom's slots."""
    layout, batch, mats = _batch([WATER, METHANOL], "def2-svp", device, torch.float64)
    diag, off = split(flatten(mats), batch)
    z, _ = METHANOL
    model = convert(mats[1].cpu(), layout, z, "pyscf", "e3nn")
    n = [layout.n_ao(int(el)) for el in z]
    start = np.cumsum([0, *n])
    valid = batch.slot_ao[3:] >= 0  # methanol's atoms come after water's 3
    pairs = batch.pair_index[:, 6:].cpu() - 3  # water has 3*2 pairs
    for p, (i, j) in enumerate(pairs.T.tolist()):
        expect = model[start[i] : start[i + 1], start[j] : start[j + 1]]
        got = off[6 + p].cpu()[valid[i].cpu()][:, valid[j].cpu()]
        assert torch.equal(got, expect)
    for i in range(len(z)):
        got = diag[3 + i].cpu()[valid[i].cpu()][:, valid[i].cpu()]
        assert torch.equal(got, model[start[i] : start[i + 1], start[i] : start[i + 1]])


def test_padding_is_zero_and_assemble_ignores_it(device):
    _, batch, mats = _batch([WATER], "def2-svp", device, torch.float64)
    diag, off = split(flatten(mats), batch)
    pad = ~(batch.slot_ao >= 0)
    assert (diag[pad[:, :, None].expand_as(diag)] == 0).all()
    noisy = diag + pad[:, :, None].to(diag.dtype)  # garbage in padding
    assert torch.equal(assemble(noisy, off, batch), flatten(mats))


def test_assemble_is_differentiable():
    _, batch, mats = _batch([WATER], "def2-svp", "cpu", torch.float64)
    diag, off = split(flatten(mats), batch)
    diag.requires_grad_(True)
    assemble(diag, off, batch).sum().backward()
    assert torch.equal(
        diag.grad != 0, (batch.slot_ao[:, :, None] >= 0) & (batch.slot_ao[:, None, :] >= 0)
    )


def test_orca_tables_read_an_orca_matrix_into_the_same_blocks():
    """The signed path: blocks of an ORCA-order matrix equal those of the PySCF-order one."""
    z, pos = CH3SCL
    layout = AOLayout("def2-tzvp", z)
    mol = mole(z, pos, "def2-tzvp")
    s = torch.from_numpy(mol.intor("int1e_ovlp"))

    def blocks(matrix, convention):
        data = block_data(layout, z, convention)
        return split(matrix.reshape(-1), data), data

    (ref_diag, ref_off), _ = blocks(s, "pyscf")
    orca = convert(s, layout, z, "pyscf", "orca")
    (diag, off), data = blocks(orca, "orca")
    assert torch.equal(diag, ref_diag) and torch.equal(off, ref_off)
    assert torch.equal(assemble(diag, off, data), orca.reshape(-1))


def test_cached_gather_follows_the_tables_device(device):
    """A cached item moved to another device (``.to`` replaces its tensors) must not keep the
    gather indices of the old device; an unmoved item reuses its cache."""
    item = HamiltonianDataset(ids=[0])[0]
    before = block_gather(item)
    assert block_gather(item) is before  # cached
    item.to(device)
    after = block_gather(item)
    assert after.diag.device.type == device.type and after.reverse.device.type == device.type
    # on any device: replacing the tables (as a move to another device does) rebuilds the cache
    item.apply(lambda t: t.clone())
    rebuilt = block_gather(item)
    assert rebuilt is not after and torch.equal(rebuilt.diag.cpu(), before.diag)
    diag, off = split(assemble(item.h_diag, item.h_off, item), item)
    assert torch.equal(diag, item.h_diag) and torch.equal(off, item.h_off)
