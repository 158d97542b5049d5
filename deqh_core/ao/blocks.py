"""Block form: a molecule's matrix as padded per-atom and per-ordered-pair blocks.

A matrix ``M`` over a molecule's AOs (PySCF order, say) becomes

* ``diag[i] = M[AO(i), AO(i)]``, shape ``[n_atoms, A, A]``, and
* ``off[p] = M[AO(i), AO(j)]`` for every ordered pair ``p = (i, j)``, ``i != j``,
  shape ``[n_pairs, A, A]``,

each in the model's AO order and padded to the layout's width ``A``; masks mark the entries an
atom really has. Index tables are built once per molecule (:func:`block_tables`, stored on the
molecule's PyG ``Data``); a batch's gather indices are derived from them with a few tensor ops and
cached on the batch, so splitting and assembling are one gather / one scatter with no Python loop
over atoms or pairs.

Full matrices of a batch travel *flat*: the row-major entries of every molecule's matrix
concatenated (``[sum_b n_ao_b**2]``), see :func:`flatten` / :func:`unflatten`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch_geometric.data import Data

from deqh_core.ao.basis import AOLayout


def block_tables(
    layout: AOLayout, atomic_numbers: torch.Tensor | np.ndarray, convention: str = "pyscf"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-molecule tables from model slots to AOs of the matrix in ``convention`` order.

    Returns ``slot_ao [n_atoms, A]`` (the molecule's AO index for each padded slot, -1 where
    the atom has none), ``slot_sign [n_atoms, A]`` (+-1, 0 where empty) and the AO count.
    """
    z = np.asarray(torch.as_tensor(atomic_numbers).cpu(), dtype=np.int64)
    for el in np.unique(z):
        layout.check_element(int(el))
    ao, sign = layout.slot_tables(convention)
    n_ao = layout.n_ao_table[z]
    offset = np.cumsum(n_ao) - n_ao
    slot_ao = np.where(ao[z] >= 0, ao[z] + offset[:, None], -1)
    return torch.from_numpy(slot_ao), torch.from_numpy(sign[z]).to(torch.int8), int(n_ao.sum())


def block_data(layout: AOLayout, atomic_numbers, convention: str = "pyscf", **fields) -> Data:
    """A PyG ``Data`` of one molecule carrying its block tables (``slot_ao``, ``slot_sign``,
    ``n_ao``, ``pair_index``) plus any ``fields``; batch several with ``Batch.from_data_list``."""
    slot_ao, slot_sign, n_ao = block_tables(layout, atomic_numbers, convention)
    n_atoms = slot_ao.shape[0]
    return Data(
        slot_ao=slot_ao,
        slot_sign=slot_sign,
        n_ao=torch.tensor([n_ao]),
        pair_index=all_pairs(n_atoms),
        num_nodes=n_atoms,
        **fields,
    )


def all_pairs(n_atoms: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[2, n(n-1)]`` every ordered atom pair ``(i, j)``, ``i != j``, row-major."""
    i, j = torch.meshgrid(
        torch.arange(n_atoms, device=device), torch.arange(n_atoms, device=device), indexing="ij"
    )
    keep = i != j
    return torch.stack([i[keep], j[keep]])


@dataclass
class BlockGather:
    """Flat gather indices of one batch (see module doc).

    Masked entries point at ``size``, one past the end, where :func:`split` reads a zero and
    :func:`assemble` writes into a discarded slot: no boolean indexing per call.
    """

    diag: torch.Tensor  # [n_atoms, A, A] long
    off: torch.Tensor  # [n_pairs, A, A] long
    diag_mask: torch.Tensor  # [n_atoms, A, A] bool
    off_mask: torch.Tensor  # [n_pairs, A, A] bool
    diag_sign: torch.Tensor  # [n_atoms, A, A] int8, 0 where masked
    off_sign: torch.Tensor  # [n_pairs, A, A] int8
    n_ao: torch.Tensor  # [n_molecules] long
    offset: torch.Tensor  # [n_molecules] long: start of each molecule in the flat vector
    size: int  # length of the flat vector
    reverse: torch.Tensor  # [n_pairs] position of pair (j, i) for pair (i, j)
    _signs: dict = field(default_factory=dict, repr=False)
    _square: list = field(default_factory=list, repr=False)

    def square_index(self) -> tuple[torch.Tensor, int]:
        """``(index [size], N)``: where each flat entry sits in the batch's matrices padded to
        ``[n_molecules, N, N]`` (``N`` the largest AO count), flattened; built once."""
        if not self._square:
            n = self.n_ao
            width = int(n.max())
            mol = torch.repeat_interleave(torch.arange(len(n), device=n.device), n * n)
            local = torch.arange(self.size, device=n.device) - self.offset[mol]
            row, col = local // n[mol], local % n[mol]
            self._square += [mol * width * width + row * width + col, width]
        return self._square[0], self._square[1]

    @property
    def signed(self) -> bool:
        """False when no slot flips sign (e.g. PySCF -> model order): signs are skipped."""
        if "signed" not in self._signs:
            self._signs["signed"] = bool((self.diag_sign < 0).any() or (self.off_sign < 0).any())
        return self._signs["signed"]

    def signs(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The sign tensors in ``dtype`` (converted once per dtype)."""
        if dtype not in self._signs:
            self._signs[dtype] = (self.diag_sign.to(dtype), self.off_sign.to(dtype))
        return self._signs[dtype]


def _molecule_of_atom(data) -> torch.Tensor:
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.num_nodes, dtype=torch.long, device=data.slot_ao.device)
    return batch


def block_gather(data) -> BlockGather:
    """Gather indices for a molecule's or a batch's ``Data`` with ``slot_ao``, ``slot_sign``,
    ``n_ao`` and ``pair_index``; computed once and cached on the object.

    The cache is keyed by the very tensors it was built from: moving the object (``.to(cuda)``
    replaces its tensors) or replacing a table rebuilds it on the tables' device, so a cached
    item never hands out indices on another device.
    """
    sources = (
        data.slot_ao,
        data.slot_sign,
        data.n_ao,
        data.pair_index,
        getattr(data, "batch", None),
    )
    cached = data.__dict__.get("_block_gather")
    if cached is not None and all(a is b for a, b in zip(cached[0], sources)):
        return cached[1]
    slot_ao, sign = data.slot_ao, data.slot_sign
    n_ao = data.n_ao.reshape(-1).long()
    area = n_ao * n_ao
    offset = torch.cumsum(area, 0) - area
    size = int(area.sum())
    mol = _molecule_of_atom(data)
    valid = slot_ao >= 0
    ao = slot_ao.clamp(min=0)
    row = offset[mol][:, None] + ao * n_ao[mol][:, None]  # [n_atoms, A] start of each AO row

    def pairs(i: torch.Tensor, j: torch.Tensor):
        index = row[i][:, :, None] + ao[j][:, None, :]
        mask = valid[i][:, :, None] & valid[j][:, None, :]
        index = torch.where(mask, index, torch.full_like(index, size))
        return index, mask, sign[i][:, :, None] * sign[j][:, None, :]

    atoms = torch.arange(len(mol), device=mol.device)
    diag, diag_mask, diag_sign = pairs(atoms, atoms)
    off, off_mask, off_sign = pairs(data.pair_index[0], data.pair_index[1])
    gather = BlockGather(
        diag,
        off,
        diag_mask,
        off_mask,
        diag_sign,
        off_sign,
        n_ao,
        offset,
        size,
        reverse_pairs(data.pair_index, len(mol)),
    )
    data.__dict__["_block_gather"] = (sources, gather)
    return gather


def reverse_pairs(pair_index: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """``[n_pairs]``: for each pair ``(i, j)`` the position of ``(j, i)`` (vectorised search)."""
    key = pair_index[0] * n_atoms + pair_index[1]
    order = torch.argsort(key)
    found = torch.searchsorted(key[order], pair_index[1] * n_atoms + pair_index[0])
    reverse = order[found.clamp(max=len(key) - 1)]
    if not torch.equal(pair_index[:, reverse], pair_index.flip(0)):
        raise ValueError("pair_index lacks the reverse of some pair (need all ordered pairs)")
    return reverse


def symmetrize(diag: torch.Tensor, off: torch.Tensor, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a batch's blocks an exactly symmetric matrix: ``diag[i] = (M + Mᵀ)/2`` and
    ``off(i, j) = (off(i, j) + off(j, i)ᵀ)/2``."""
    reverse = block_gather(data).reverse
    return (diag + diag.transpose(1, 2)) / 2, (off + off[reverse].transpose(1, 2)) / 2


def split(flat: torch.Tensor, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat full matrices of a batch -> ``(diag [n_atoms, A, A], off [n_pairs, A, A])``
    in model order, zero where masked."""
    g = block_gather(data)
    if flat.shape != (g.size,):
        raise ValueError(f"expected a flat vector of {g.size} entries, got {tuple(flat.shape)}")
    padded = torch.cat([flat, flat.new_zeros(1)])
    diag = padded.index_select(0, g.diag.reshape(-1)).view(g.diag.shape)
    off = padded.index_select(0, g.off.reshape(-1)).view(g.off.shape)
    if not g.signed:
        return diag, off
    diag_sign, off_sign = g.signs(flat.dtype)
    return diag * diag_sign, off * off_sign


def assemble(diag: torch.Tensor, off: torch.Tensor, data) -> torch.Tensor:
    """Inverse of :func:`split`: blocks in model order -> flat full matrices of the batch.

    Differentiable; entries outside the masks are ignored.
    """
    g = block_gather(data)
    if g.signed:
        diag_sign, off_sign = g.signs(diag.dtype)
        diag, off = diag * diag_sign, off * off_sign
    out = diag.new_zeros(g.size + 1)
    out = out.index_put((g.diag.reshape(-1),), diag.reshape(-1))
    out = out.index_put((g.off.reshape(-1),), off.reshape(-1))
    return out[:-1]


def to_square(flat: torch.Tensor, data) -> torch.Tensor:
    """Flat full matrices of a batch -> ``[n_molecules, N, N]``, zero-padded to the largest
    AO count ``N`` (for batched dense algebra: ``torch.bmm``)."""
    g = block_gather(data)
    index, width = g.square_index()
    out = flat.new_zeros(len(g.n_ao) * width * width)
    return out.index_put((index,), flat).view(len(g.n_ao), width, width)


def from_square(square: torch.Tensor, data) -> torch.Tensor:
    """Inverse of :func:`to_square`: the flat full matrices (padding dropped)."""
    index, _ = block_gather(data).square_index()
    return square.reshape(-1).index_select(0, index)


def flatten(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Square matrices of several molecules -> one flat vector (row-major, concatenated)."""
    return torch.cat([m.reshape(-1) for m in matrices])


def unflatten(flat: torch.Tensor, n_ao: torch.Tensor | Sequence[int]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten` given each molecule's AO count."""
    sizes = [int(n) for n in torch.as_tensor(n_ao).reshape(-1)]
    parts = torch.split(flat, [n * n for n in sizes])
    return [p.view(n, n) for p, n in zip(parts, sizes)]
