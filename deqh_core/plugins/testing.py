"""Conformance kit for backbone authors, in the spirit of scikit-learn's ``check_estimator``.

``check_backbone("name")`` builds the backbone on small real molecules (PySCF matrices, float64)
in every mode it supports — predictor, reading S, reading H (DEQ), reading H's off-diagonal
blocks too (DEQ feedback ``"full"``) — and checks that it is

* rotation-equivariant in the AO layout: ``H(R·x) = D(R) H(x) D(R)ᵀ`` with e3nn's Wigner-D,
* translation-invariant,
* permutation-equivariant over atoms,
* exactly symmetric,
* the same for a molecule alone and inside a batch (for a DEQ, also beside batch-mates that
  stop iterating earlier or later),
* DEQ-wrappable (when it reads H): the wrapper runs and reports its iterations,

and all of it with a prior Hamiltonian too (``prior="1e"`` / ``"minao"``: the backbone learns
``H - H0``, :mod:`deqh_core.solvers.prior`). PySCF's ``H0`` of a rotated molecule is
equivariant only up to its DFT grid (~1e-6 Ha for minao), so the rotated molecule gets the
reference ``H0`` rotated exactly: the check is on the model, not on PySCF's grid.

Run it in a plugin's own tests, or from the shell: ``deqh backbones check NAME``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from e3nn import o3
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout, mole
from deqh_core.ao.blocks import assemble
from deqh_core.ao.convention import model_rotation
from deqh_core.data.dataset import molecule_data
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import MoleculeRecord
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.backbone import BackboneSpec, ReducedSolver
from deqh_core.solvers.deq import DEQConfig, DEQHamiltonianSolver, identity_blocks
from deqh_core.solvers.prior import InitialGuess, PriorResidual
from deqh_core.solvers.protocol import Blocks
from deqh_core.util.device import to_device

# Small real molecules (Å): water and methanol, H/C/O in def2-SVP.
KIT_MOLECULES: dict[str, tuple[list[int], list[list[float]]]] = {
    "water": ([8, 1, 1], [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]]),
    "methanol": (
        [6, 8, 1, 1, 1, 1],
        [
            [-0.046, 0.663, 0.0],
            [-0.046, -0.758, 0.0],
            [-1.086, 0.975, 0.0],
            [0.438, 1.079, 0.887],
            [0.438, 1.079, -0.887],
            [0.868, -1.086, 0.0],
        ],
    ),
}


FLOAT32_BATCH_TOL = 1e-5
"""Largest change, relative to the output's scale, of a molecule's float32 blocks between alone
and in a batch, after one evaluation (float32 rounding is ~6e-8 relative)."""


@dataclass
class CheckResult:
    mode: str  # "predictor", "reads S", "reads H", "reads H+S"
    check: str
    passed: bool
    detail: str


class BackboneCheckError(AssertionError):
    """Raised by :func:`check_backbone` when a check fails; lists every failure."""


def _item(z, pos, layout: AOLayout, mol_id: int, prior: str = "none", lowdin: bool = False):
    """A dataset item whose 'label' is PySCF's core Hamiltonian (a real, geometry-dependent H),
    with the ``prior`` H0 (B3LYP5 in the layout's basis) unless that is ``"none"`` (and
    ``S^(1/2)`` for a ``lowdin`` correction)."""
    mol = mole(z, pos, layout.basis)
    record = MoleculeRecord(
        mol_id,
        np.asarray(z),
        np.asarray(pos, dtype=float),
        mol.intor("int1e_kin") + mol.intor("int1e_nuc"),
        mol.intor("int1e_ovlp"),
    )
    item = molecule_data(record, layout)
    if prior != "none":
        item = InitialGuess(Recipe(basis=layout.basis), prior, sqrt_overlap=lowdin)(item)
    return item


def _run(solver, items, deq_config=None):
    batch = Batch.from_data_list(items)
    if solver.capabilities.reads_h:
        wrapper = DEQHamiltonianSolver(solver, deq_config)
        blocks, diagnostics = wrapper(batch)
        return batch, blocks, diagnostics
    return batch, solver(batch, None, solver.inject(batch)), None


def _evaluate(solver, items) -> Blocks:
    """One float32 evaluation of ``solver`` on ``items`` (from the identity for a solver that
    reads H)."""
    batch = to_device(Batch.from_data_list(items), items[0].z.device, torch.float32)
    h = identity_blocks(batch, torch.float32) if solver.capabilities.reads_h else None
    return solver(batch, h, solver.inject(batch))


def _stopping_check(mode, solver, reference, mates, deq_config, diff, limit) -> CheckResult:
    """Per-molecule stopping: with a tolerance the reference meets at its third evaluation,
    beside batch-mates that meet it earlier or later (or never), the reference stops where it
    stops alone, with the same blocks and residual."""
    _, _, free = _run(solver, [*mates, reference], deq_config)  # f_tol unreachable: full traces
    trace = free.abs_trace
    tol = float(trace[-1, 2]) * (1 + 1e-9)
    stop = deq_config.model_copy(update={"f_tol": tol})
    _, alone, lone = _run(solver, [reference], stop)
    _, crowd, mixed = _run(solver, [*mates, reference], stop)
    n_atoms = sum(len(m.z) for m in mates)
    n_pairs = sum(m.pair_index.shape[1] for m in mates)
    error = diff(Blocks(crowd.diag[n_atoms:], crowd.off[n_pairs:]), alone)
    same_step = int(mixed.nstep[-1]) == int(lone.nstep[0])
    same_residual = abs(float(mixed.abs_residual[-1]) - float(lone.abs_residual[0])) <= limit
    steps = ", ".join(str(int(n)) for n in mixed.nstep)
    return CheckResult(
        mode,
        "same alone and beside batch-mates that stop at other iterations",
        error <= limit and same_step and same_residual,
        f"max error {error:.2e} (allowed {limit:.2e}); stopping evaluation alone "
        f"{int(lone.nstep[0])}, in the batch {steps} (the molecule last)",
    )


def check_backbone(
    spec: BackboneSpec | str,
    config=None,
    basis: str = "def2-svp",
    seed: int = 0,
    atol: float = 1e-8,
    raise_on_failure: bool = True,
    prior: str = "none",
    prior_basis: str | None = None,
) -> list[CheckResult]:
    """Run every check on every mode ``spec`` supports, with the ``prior`` Hamiltonian
    (``"none"``, ``"1e"``, ``"minao"``) and its correction in ``prior_basis`` (``"ao"``,
    ``"lowdin"``; default as ``model.prior_basis``: lowdin with a prior); ``atol`` is relative to
    the largest output entry.
    Returns the results; raises :class:`BackboneCheckError` on any failure unless
    ``raise_on_failure`` is False."""

    if prior_basis is None:
        prior_basis = "ao" if prior == "none" else "lowdin"
    if isinstance(spec, str):
        spec = get_backbone(spec)
    config = config or spec.config()
    molecules = list(KIT_MOLECULES.values())
    layout = AOLayout(basis, sorted({z for zs, _ in molecules for z in zs}))
    caps = spec.capabilities
    modes = [("predictor", False, False, False)]
    if caps.reads_s:
        modes.append(("reads S", False, True, False))
    if caps.reads_h:
        reads = "reads H+S" if caps.reads_s else "reads H"
        modes.append((reads, True, caps.reads_s, False))
        if caps.reads_pairs:
            modes.append((f"{reads}, full feedback", True, caps.reads_s, True))
    # a fixed number of plain iterations: the same computation alone and inside a batch
    deq_config = DEQConfig(f_solver="fixed_point_iter", f_max_iter=6, b_max_iter=6, f_tol=1e-30)
    if prior != "none":
        deq_config = deq_config.model_copy(update={"init": prior})
    results: list[CheckResult] = []
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for mode, reads_h, reads_s, reads_pairs in modes:
            torch.manual_seed(seed)
            solver = ReducedSolver(spec, config, layout, reads_h, reads_s, reads_pairs)
            solver = solver.double().eval()
            if prior != "none":
                solver = PriorResidual(solver, prior, prior_basis)
                mode = f"{mode}, prior {prior}" + (
                    f" ({prior_basis})" if prior_basis != "ao" else ""
                )
            with torch.no_grad():
                results += _check_mode(
                    mode, solver, molecules, layout, deq_config, atol, seed, prior, prior_basis
                )
    finally:
        torch.set_default_dtype(default)
    failures = [r for r in results if not r.passed]
    if failures and raise_on_failure:
        lines = "\n".join(f"  [{r.mode}] {r.check}: {r.detail}" for r in failures)
        raise BackboneCheckError(
            f"backbone {spec.name!r} failed {len(failures)} check(s):\n{lines}"
        )
    return results


def _check_mode(
    mode, solver, molecules, layout, deq_config, atol, seed, prior="none", prior_basis="ao"
) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    z, pos = molecules[-1]
    pos = np.asarray(pos)
    lowdin = prior_basis == "lowdin"

    def item(z, pos, mol_id=0):
        return _item(z, pos, layout, mol_id, prior, lowdin)

    reference = item(z, pos)
    batch, ref, diagnostics = _run(solver, [reference], deq_config)
    scale = max(ref.diag.abs().max().item(), ref.off.abs().max().item(), 1e-12)
    out: list[CheckResult] = []

    def record(name: str, error: float, limit: float = atol) -> None:
        out.append(
            CheckResult(
                mode,
                name,
                error <= limit * scale,
                f"max error {error:.2e} (allowed {limit * scale:.2e})",
            )
        )

    def diff(a: Blocks, b: Blocks) -> float:
        return max((a.diag - b.diag).abs().max().item(), (a.off - b.off).abs().max().item())

    # rotation: compare blocks with the padded Wigner-D of the layout
    torch.manual_seed(seed)
    rot = o3.rand_matrix(dtype=torch.float64)
    d = layout.irreps.D_from_matrix(model_rotation(rot))
    turned = item(z, pos @ rot.numpy().T)  # its S^(1/2) is exact: S takes no grid
    if prior != "none":  # the reference H0, rotated exactly (PySCF's grid is not isotropic)
        turned.h0_diag = d @ reference.h0_diag @ d.T
        turned.h0_off = d @ reference.h0_off @ d.T
        turned.h0_kind = prior
    _, rotated, _ = _run(solver, [turned], deq_config)
    expect = Blocks(d @ ref.diag @ d.T, d @ ref.off @ d.T)
    record("rotation equivariance (e3nn Wigner-D)", diff(rotated, expect))

    shift = rng.normal(size=3) * 3.0
    _, moved, _ = _run(solver, [item(z, pos + shift)], deq_config)
    record("translation invariance", diff(moved, ref))

    perm = rng.permutation(len(z))
    _, permuted, _ = _run(solver, [item(np.asarray(z)[perm], pos[perm])], deq_config)
    inverse = np.argsort(perm)
    pair_pos = {(i, j): p for p, (i, j) in enumerate(batch.pair_index.T.tolist())}
    src, dst = batch.pair_index
    # pair (i, j) of the original is pair (inverse[i], inverse[j]) of the permuted molecule
    mapped = [
        pair_pos[(int(inverse[i]), int(inverse[j]))] for i, j in zip(src.tolist(), dst.tolist())
    ]
    expect = Blocks(permuted.diag[torch.as_tensor(inverse)], permuted.off[torch.as_tensor(mapped)])
    record("permutation equivariance over atoms", diff(ref, expect))

    flat = assemble(ref.diag, ref.off, batch)
    m = flat.view(int(batch.n_ao), int(batch.n_ao))
    out.append(
        CheckResult(
            mode,
            "exact symmetry",
            bool(torch.equal(m, m.T)),
            f"max |H - Hᵀ| = {(m - m.T).abs().max().item():.2e}",
        )
    )

    other_z, other_pos = molecules[0]
    items = [item(other_z, other_pos, 1), reference]
    _, both, _ = _run(solver, items, deq_config)
    first_atoms, first_pairs = len(other_z), len(other_z) * (len(other_z) - 1)
    inside = Blocks(both.diag[first_atoms:], both.off[first_pairs:])
    record("same alone and inside a batch", diff(inside, ref))

    # float32, whose rounding depends on how a batch is blocked: one evaluation gives the
    # molecule the blocks it gets alone, beside batch-mates (an untrained DEQ's iterations can
    # only amplify float32 rounding; the float64 check above covers the whole solve)
    single = copy.deepcopy(solver).to(torch.float32)
    mates = [item(other_z, other_pos, 1), item(z, pos * 1.15, 2)]
    alone = _evaluate(single, [reference])
    crowd = _evaluate(single, [*mates, reference])
    n_atoms = sum(len(m.z) for m in mates)
    n_pairs = sum(m.pair_index.shape[1] for m in mates)
    inside = Blocks(crowd.diag[n_atoms:], crowd.off[n_pairs:])
    record("same alone and inside a batch, float32", diff(inside, alone), FLOAT32_BATCH_TOL)

    if solver.capabilities.reads_h:
        out.append(_stopping_check(mode, solver, reference, mates, deq_config, diff, atol * scale))
        ok = (
            diagnostics is not None
            and diagnostics.nfe >= 1
            and not diagnostics.failed
            and bool(torch.isfinite(ref.diag).all())
        )
        out.append(CheckResult(mode, "DEQ-wrappable", ok, f"{diagnostics}"))
    return out
