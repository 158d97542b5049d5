"""AO conventions: the order and sign of the real spherical AOs inside a shell.

The model works in e3nn's irreps. e3nn (>= 0.5) takes the y axis as the polar axis of its real
spherical harmonics, so we hand e3nn every Cartesian vector in the *model frame*
``(y, z, x)`` (:func:`to_model_frame`). In that frame e3nn's harmonics of degree l are exactly the
standard real solid harmonics in the order m = -l..l with positive signs, and every
quantum-chemistry convention differs from it by a permutation and signs per shell:

========  =====================================  ==============================
name      order within a shell of degree l       signs
========  =====================================  ==============================
``e3nn``  m = -l..l  (l=1: y, z, x)               all +
``pyscf`` l=1: x, y, z; otherwise m = -l..l       all +
``orca``  m = 0, +1, -1, +2, -2, ...              -1 for |m| >= 3
========  =====================================  ==============================

Converting a matrix between two conventions is therefore one gather with a sign, exactly
invertible. A rotation ``R`` of the molecule acts on model-order AOs as the e3nn Wigner-D of
``model_rotation(R)``; :func:`wigner_D` gives it for a whole molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from e3nn import o3

from deqh_core.util.errors import BasisError

MODEL_FRAME: tuple[int, int, int] = (1, 2, 0)
"""Cartesian axes (of x, y, z) that the model sees as its first, second and third axis."""


def to_model_frame(vectors: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` lab-frame vectors -> the same vectors in the model frame ``(y, z, x)``."""
    return vectors[..., list(MODEL_FRAME)]


def model_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` lab-frame rotation -> the same rotation expressed in the model frame."""
    p = list(MODEL_FRAME)
    return rotation[..., p, :][..., :, p]


@dataclass(frozen=True)
class Convention:
    """A named AO convention; ``shell(l)`` says how to read a shell in model order."""

    name: str
    description: str

    def shell(self, l: int) -> tuple[np.ndarray, np.ndarray]:
        """``(index, sign)`` of length 2l+1: model component ``k`` (m = k - l) is
        ``sign[k] * shell_in_this_convention[index[k]]``."""
        return _shell_map(self.name, l)


@cache
def _shell_map(name: str, l: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.arange(-l, l + 1)
    sign = np.ones(2 * l + 1, dtype=np.int64)
    if name == "e3nn" or (name == "pyscf" and l != 1):
        index = np.arange(2 * l + 1)
    elif name == "pyscf":  # p shells are x, y, z = m(+1, -1, 0)
        index = np.array([1, 2, 0])
    elif name == "orca":  # m = 0, +1, -1, +2, -2, ...; sign flip for |m| >= 3
        index = np.where(m > 0, 2 * m - 1, 2 * np.abs(m))
        sign[np.abs(m) >= 3] = -1
    else:  # pragma: no cover - guarded by get_convention
        raise KeyError(name)
    index.setflags(write=False)
    sign.setflags(write=False)
    return index, sign


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("e3nn", "model order: real spherical harmonics m=-l..l in the (y,z,x) frame"),
        Convention("pyscf", "PySCF spherical AOs: p as x,y,z; l>=2 as m=-l..l"),
        Convention("orca", "ORCA spherical AOs: m=0,+1,-1,+2,-2,...; -1 for |m|>=3"),
    )
}


def get_convention(name: str) -> Convention:
    try:
        return CONVENTIONS[name.lower()]
    except KeyError:
        raise BasisError(
            f"unknown AO convention {name!r}; known: {', '.join(CONVENTIONS)}"
        ) from None


def ao_permutation(
    layout, atomic_numbers: Sequence[int] | np.ndarray, src: str, dst: str
) -> tuple[np.ndarray, np.ndarray]:
    """Gather index and signs taking a molecule's AO vector from ``src`` to ``dst`` order.

    ``x_dst = sign * x_src[index]``; both ``[n_ao]``. Built with table look-ups, no loop over
    atoms.
    """
    z = np.asarray(atomic_numbers, dtype=np.int64)
    for el in np.unique(z):
        layout.check_element(int(el))
    n_ao = layout.n_ao_table[z]
    offset = np.cumsum(n_ao) - n_ao
    src_ao, src_sign = layout.slot_tables(src)
    dst_ao, dst_sign = layout.slot_tables(dst)
    valid = src_ao[z] >= 0  # [n_atoms, A]; same slots are filled in every convention
    src_idx = (src_ao[z] + offset[:, None])[valid]
    dst_idx = (dst_ao[z] + offset[:, None])[valid]
    index = np.empty(int(n_ao.sum()), dtype=np.int64)
    sign = np.empty_like(index)
    index[dst_idx] = src_idx
    sign[dst_idx] = (src_sign[z] * dst_sign[z])[valid]
    return index, sign


def convert(matrix, layout, atomic_numbers, src: str, dst: str):
    """Convert ``[..., n_ao, n_ao]`` matrices (numpy or torch) from ``src`` to ``dst`` order."""
    index, sign = ao_permutation(layout, atomic_numbers, src, dst)
    n = matrix.shape[-1]
    if matrix.shape[-2:] != (len(index), len(index)):
        raise BasisError(
            f"matrix of size {tuple(matrix.shape[-2:])} does not fit the molecule's "
            f"{len(index)} AOs in {layout.basis}"
        )
    del n
    if isinstance(matrix, torch.Tensor):
        index_t = torch.as_tensor(index, device=matrix.device)
        sign_t = torch.as_tensor(sign, device=matrix.device, dtype=matrix.dtype)
        return matrix[..., index_t[:, None], index_t[None, :]] * (sign_t[:, None] * sign_t)
    return matrix[..., index[:, None], index[None, :]] * np.outer(sign, sign)


def wigner_D(layout, atomic_numbers, rotation: torch.Tensor) -> torch.Tensor:
    """``[n_ao, n_ao]`` representation of a lab-frame ``rotation`` on a molecule's model-order AOs.

    If ``x' = R x`` then ``M(x')`` in model order equals ``D M(x) D^T``.
    """
    rot = model_rotation(rotation)
    default = torch.get_default_dtype()
    # e3nn builds part of D in the default dtype: without this, float64 D is only float32-exact
    torch.set_default_dtype(rot.dtype)
    try:
        blocks = []
        for z in atomic_numbers:  # a test utility, not a hot path
            irreps = o3.Irreps([(1, (l, (-1) ** l)) for l in layout.shells[int(z)]])
            blocks.append(irreps.D_from_matrix(rot))
    finally:
        torch.set_default_dtype(default)
    return torch.block_diag(*blocks)
