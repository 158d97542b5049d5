"""Diagonal reduction: equivariant node features from an atom's on-site matrix block.

Paper §4.1, eq. 8-9 and A.5-A.6 (after OrbNet-Equi): the on-site block ``T_AA`` of H or S of
atom A is contracted with the on-site three-index overlap between the atom's AOs and an
element-independent auxiliary basis,

    h_A[k] = Σ_{μν} T_AA[μ, ν] Q̃_Z[μ, ν, k],   Q̃_Z[μ, ν, k] = ∫ φ_μ(r) φ_ν(r) χ_k(r) dr,

with ``φ`` the AOs of element Z and ``χ`` the auxiliary functions, all centred at the origin.
Because ``χ_k`` of degree l transforms like a spherical harmonic, ``h_A`` is an equivariant
``16x0e + 8x1o + 4x2e`` feature (60 numbers) for every element and basis set.

``Q̃`` depends only on the basis set and the element: :func:`onsite_overlap_table` computes it
once with PySCF's three-centre one-electron overlap (``int3c1e``) and caches it on disk.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from e3nn import o3

from deqh_core.ao.basis import AOLayout, atomic_number, element_shells, mole, symbol
from deqh_core.ao.convention import get_convention
from deqh_core.util.cache import cache_dir
from deqh_core.util.errors import BasisError
from deqh_core.util.files import atomic_open

if TYPE_CHECKING:
    from pyscf import gto  # imported where used: precomputed tables work without PySCF

# Even-tempered auxiliary basis of paper A.6, eq. 35-37 (atomic units): (l, first exponent,
# ratio, count). Each function is one normalised primitive Gaussian r^l exp(-γ r²) Y_lm.
AUX_SHELLS: tuple[tuple[int, float, float, int], ...] = (
    (0, 128.0, 0.5, 16),
    (1, 32.0, 0.25, 8),
    (2, 4.0, 0.25, 4),
)
AUX_IRREPS = o3.Irreps([(n, (l, (-1) ** l)) for l, _, _, n in AUX_SHELLS])
N_AUX = AUX_IRREPS.dim  # 60

# Cache files carry this tag; it changes whenever the auxiliary basis or the file layout does.
_FORMAT = 1
AUX_VERSION = f"aux{_FORMAT}-" + hashlib.sha256(repr(AUX_SHELLS).encode()).hexdigest()[:8]


def aux_exponents(l: int) -> np.ndarray:
    """Exponents γ (bohr⁻²) of the auxiliary shells of degree ``l``, largest first."""
    for ll, first, ratio, n in AUX_SHELLS:
        if ll == l:
            return first * ratio ** np.arange(n)
    return np.zeros(0)


@cache
def _aux_mole() -> gto.Mole:
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf import gto

    # The auxiliary basis is element-independent, so any closed-shell atom can carry it.
    basis = [[l, [float(g), 1.0]] for l, *_ in AUX_SHELLS for g in aux_exponents(l)]
    return gto.M(atom=[["He", (0.0, 0.0, 0.0)]], basis={"He": basis}, unit="Bohr", verbose=0)


def _to_model_order(q: np.ndarray, shells_per_axis: list[list[int]]) -> np.ndarray:
    """Reorder every axis of ``q`` from PySCF's AO order to the model's e3nn order."""
    conv = get_convention("pyscf")
    for axis, shells in enumerate(shells_per_axis):
        index, sign, offset = [], [], 0
        for l in shells:
            idx, sg = conv.shell(l)
            index.append(offset + idx)
            sign.append(sg)
            offset += 2 * l + 1
        shape = [1] * q.ndim
        shape[axis] = offset
        q = np.take(q, np.concatenate(index), axis=axis) * np.concatenate(sign).reshape(shape)
    return q


def _shells(mol: gto.Mole) -> list[int]:
    return [int(mol.bas_angular(i)) for i in range(mol.nbas) for _ in range(mol.bas_nctr(i))]


def _compute_table(atom: gto.Mole) -> np.ndarray:
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf import gto

    aux = _aux_mole()
    both = gto.conc_mol(atom, aux)
    # ECPs (if the basis has any) do not enter: int3c1e only involves the basis functions.
    q = both.intor("int3c1e", shls_slice=(0, atom.nbas, 0, atom.nbas, atom.nbas, both.nbas))
    ao = _shells(atom)
    return np.ascontiguousarray(_to_model_order(q, [ao, ao, _shells(aux)]), dtype=np.float64)


def _safe_name(basis: str) -> str:
    # lower case; any character outside [a-z0-9.+-] becomes _XX (its hex code): injective,
    # so "6-31g*" and "6-31g(d)" never share a file, and safe on every filesystem.
    return re.sub(r"[^a-z0-9.+-]", lambda m: f"_{ord(m.group()):02x}", basis.strip().lower())


def cache_path(basis: str, z: int, atom: gto.Mole | None = None) -> Path:
    """Cache file of element ``z``'s table in ``basis``.

    The name holds the basis name, the element, :data:`AUX_VERSION` and a hash of the basis
    functions PySCF actually loads for the element, so a changed basis file (or PySCF
    version with different basis data) never reads a stale table.
    """
    atom = atom if atom is not None else mole([z], np.zeros((1, 3)), basis)
    content = hashlib.sha256(repr(atom._basis[symbol(z)]).encode()).hexdigest()[:12]
    return cache_dir() / f"onsite3c_{_safe_name(basis)}_Z{z:03d}_{AUX_VERSION}_{content}.npz"


def _checksum(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float64).tobytes()).hexdigest()


def _read(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The table stored at ``path`` if it is intact, else None."""
    try:
        with np.load(path, allow_pickle=False) as f:
            table, checksum = f["table"], str(f["sha256"])
    except Exception:  # missing, truncated, not an npz, wrong keys: all mean "recompute"
        return None
    if table.shape != shape or table.dtype != np.float64 or checksum != _checksum(table):
        return None
    return table


def _write(path: Path, table: np.ndarray) -> None:
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, table=table, sha256=np.array(_checksum(table)))
    except OSError as err:  # a read-only home must not stop training: warn and go on
        warnings.warn(f"could not cache the on-site overlap table at {path}: {err}", stacklevel=3)


@cache
def onsite_overlap_table(basis: str, z: int) -> np.ndarray:
    """On-site three-index overlap ``Q̃[μ, ν, k] = ∫ φ_μ φ_ν χ_k`` of element ``z`` in ``basis``.

    Args:
        basis: a basis-set name PySCF knows (e.g. ``"def2-svp"``).
        z: atomic number.

    Returns:
        Read-only float64 array ``[n_ao(z), n_ao(z), 60]`` in bohr^(-3/2) (three normalised
        functions integrated over space). ``μ, ν`` run over the element's AOs in the model's
        e3nn order (PySCF's shell order; components m = -l..l, p as y, z, x); ``k`` over the
        auxiliary functions ``16x0e + 8x1o + 4x2e``, also in e3nn order.

    Cached in this process (``onsite_overlap_table.cache_clear()`` empties it) and on disk
    under :func:`cache_dir`; a cache file that fails its checksum or shape is recomputed.
    """
    z = atomic_number(z)
    element_shells(basis, z)  # clear BasisError for an element the basis lacks
    atom = mole([z], np.zeros((1, 3)), basis)
    path = cache_path(basis, z, atom)
    table = _read(path, (atom.nao, atom.nao, N_AUX))
    if table is None:
        table = _compute_table(atom)
        _write(path, table)
    table.setflags(write=False)
    return table


_MODES = ("irrep", "channel", "none")


def _group_matrix(mode: str) -> torch.Tensor:
    """``[60, n_groups]`` averaging matrix: ``(x**2) @ G`` is the mean square of each group.

    ``irrep``: one group per degree l (all multiplicity channels of that l together);
    ``channel``: one group per multiplicity channel (the 2l+1 components of one copy).
    """
    rows = []
    for mul, ir in AUX_IRREPS:
        if mode == "irrep":
            rows.append(torch.full((mul * ir.dim, 1), 1.0 / mul))
        else:
            rows += [torch.ones(ir.dim, 1)] * mul
    return torch.block_diag(*rows).double()


class DiagonalReduction(torch.nn.Module):
    """Equivariant node features ``16x0e + 8x1o + 4x2e`` from on-site blocks (paper eq. 8-9).

    ``h_A[k] = Σ_{μν} T_AA[μ, ν] Q̃_Z[μ, ν, k]`` with :func:`onsite_overlap_table`, then
    (optionally) normalised. Rotating the molecule by ``R`` maps ``h_A`` to
    ``irreps_out.D_from_matrix(model_rotation(R)) @ h_A`` exactly, for any normalisation.

    Normalisation (``normalize``):

    * ``True`` / ``"irrep"`` (default): every degree l is divided by the root mean square,
      over its multiplicity channels, of the channel norms (norm over m):
      ``x_l / sqrt(mean_c |x_{l,c}|² + eps²)``. The divisor is rotation invariant (all
      channels of one l rotate with the same orthogonal D), so this is exactly equivariant;
      signs and the relative sizes of the channels of one l survive, so the features stay
      informative; the map is smooth with a bounded derivative (the divisor is never below
      ``eps``, in the units of ``T`` times bohr^(-3/2)), which a DEQ's fixed-point iteration
      and implicit backward need; and zero input (padding atoms, the zero matrix, the l > 0
      part of an on-site overlap block) gives zero features and finite gradients, never NaN.
      It **discards the overall scale of each degree**: ``c·T`` (c > 0) gives the features
      of ``T`` once ``|x_l| ≫ eps``; use ``normalize=False`` to keep it.
    * ``"channel"``: what the reference DEQHNet code does, each multiplicity channel divided by
      its own norm (``x_c / sqrt(|x_c|² + eps²)``; the reference divides by ``|x_c|`` and
      replaces a zero norm with 1e-5). Each scalar becomes its sign (±1) and each l > 0
      channel a unit vector, so nearly all invariant information is lost, and a scalar channel
      crossing zero flips its feature between -1 and +1: a jump that a DEQ iterate can
      oscillate across. Kept for faithful reproduction, not as the default.
    * ``False`` / ``"none"``: the raw linear features, which keep the scale of ``T`` (units of
      ``T`` times bohr^(-3/2); for a Fock matrix of O in def2-SVP the scalars reach ~100 while
      the l > 0 parts are ~1e-3..1, so the backbone must normalise them itself).

    The on-site overlap block ``S_AA`` depends only on the element (the overlap of one atom's
    AOs with each other), so its features are a per-element constant with zero l > 0 parts.

    Buffers: ``table [n_elements, A, A, 60]`` (float64 until the module is moved with
    ``.to(dtype)``; zero in the slots an element does not fill) and ``element_row [119]``
    (Z -> row of ``table``, -1 outside the layout).
    """

    irreps_out: o3.Irreps = AUX_IRREPS

    def __init__(self, layout: AOLayout, normalize: bool | str = True, eps: float = 1e-6):
        super().__init__()
        if normalize is True or normalize is False:
            normalize = "irrep" if normalize else "none"
        if normalize not in _MODES:
            raise ValueError(f"normalize must be a bool or one of {_MODES}, got {normalize!r}")
        self.layout = layout
        self.normalize = normalize
        self.eps = float(eps)

        ao, sign = layout.slot_tables("e3nn")
        table = np.zeros((len(layout.elements), layout.width, layout.width, N_AUX))
        row = np.full(len(ao), -1, dtype=np.int64)
        for i, z in enumerate(layout.elements):
            q = onsite_overlap_table(layout.basis, z)
            filled = np.flatnonzero(ao[z] >= 0)
            s = sign[z, filled]
            table[i][np.ix_(filled, filled)] = (
                q[np.ix_(ao[z, filled], ao[z, filled])] * (s[:, None] * s)[..., None]
            )
            row[z] = i
        self.register_buffer("table", torch.from_numpy(table))
        self.register_buffer("element_row", torch.from_numpy(row))
        if normalize != "none":
            group = _group_matrix(normalize)
            self.register_buffer("group", group)
            # component k's group, to broadcast the divisor back to the 60 components
            self.register_buffer("group_of", group.argmax(dim=1))

    def extra_repr(self) -> str:
        return f"{self.layout!r}, normalize={self.normalize!r}, eps={self.eps:g}"

    def rows(self, z: torch.Tensor) -> torch.Tensor:
        """``[n_atoms]`` each atom's row of ``table``; checks the elements (one host
        synchronisation: do it once per batch, e.g. in a solver's ``inject``)."""
        row = self.element_row[z]
        if bool((row < 0).any()):
            bad = sorted({int(x) for x in z[row < 0].tolist()})
            raise BasisError(f"atomic numbers {bad} are not in the layout {self.layout!r}")
        return row

    def forward(
        self, diag: torch.Tensor, z: torch.Tensor | None = None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Features of on-site blocks.

        Args:
            diag: ``[n_atoms, A, A]`` on-site blocks in the model's e3nn order (block form),
                e.g. Hartree for H; entries outside an atom's slots are ignored.
            z: ``[n_atoms]`` atomic numbers (checked), or
            rows: ``[n_atoms]`` their :meth:`rows`, already checked (no host synchronisation).

        Returns:
            ``[n_atoms, 60]`` features ``16x0e + 8x1o + 4x2e`` in ``diag``'s dtype and device.
        """
        row = self.rows(z) if rows is None else rows
        # in float64 whatever the model's dtype: the l > 0 features are small differences of
        # large on-site entries (O's scalars ~100 against l > 0 parts ~1e-3 for a Fock matrix;
        # exactly 0 for S and the identity), and the normalisation divides them by their own
        # size, so float32 rounding, which depends on how the BLAS blocks the batch, would
        # become features that change by ~1e-2 with the molecule's batch-mates
        table = self.table.to(torch.float64)
        # every atom against every element's table in one matmul, then pick its own element:
        # layouts hold few elements, and this avoids materialising [n_atoms, A, A, 60]
        per_element = torch.einsum("nab,eabk->nek", diag.to(torch.float64), table)
        index = row[:, None, None].expand(-1, 1, N_AUX)
        x = per_element.gather(1, index).squeeze(1)
        if self.normalize != "none":
            mean_square = (x * x) @ self.group.to(x.dtype)
            x = x * torch.rsqrt(mean_square + self.eps**2)[:, self.group_of]
        return x.to(diag.dtype)
