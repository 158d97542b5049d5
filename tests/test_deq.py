"""The DEQ wrapper, its config and the PySCF initial guesses, on real molecules' block tables."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pyscf import dft, gto, scf
from torch import nn
from torch_geometric.data import Batch
from torchdeq import get_deq

from deqh_core.ao.basis import AOLayout, mole
from deqh_core.ao.blocks import assemble, block_gather
from deqh_core.data.dataset import molecule_data
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import MoleculeRecord
from deqh_core.solvers.deq import (
    DEQConfig,
    DEQFailure,
    DEQHamiltonianSolver,
    identity_blocks,
)
from deqh_core.solvers.prior import InitialGuess
from deqh_core.solvers.protocol import Blocks, Capabilities
from deqh_core.training.metrics import fixed_point_penalty, hamiltonian_loss, training_loss
from deqh_core.util.errors import DeqhError
from tests.molecules import METHANOL, WATER

F64 = torch.float64
LAYOUT = AOLayout("def2-svp", [1, 6, 8])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: extra OpenMP threads only spin against other jobs on the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def items():
    """PyG items of water and methanol; the "label" is the core Hamiltonian (cheap, real)."""
    out = []
    for i, (z, pos) in enumerate([WATER, METHANOL]):
        mol = mole(z, pos, "def2-svp")
        h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
        out.append(molecule_data(MoleculeRecord(i, z, pos, hamiltonian=h), LAYOUT))
    return out


@pytest.fixture
def batch(items):
    return Batch.from_data_list(items)


def _unit_spectral(seed: int) -> torch.Tensor:
    m = torch.randn(LAYOUT.width, LAYOUT.width, generator=torch.Generator().manual_seed(seed))
    m = m.to(F64)
    return m / torch.linalg.matrix_norm(m, 2)


class LinearToy(nn.Module):
    """``diag <- alpha M H_ii M^T + S_ii``, ``off <- beta H_ij + S_ij``: a contraction with a
    closed-form fixed point. Records the Hamiltonians it is given."""

    capabilities = Capabilities(reads_h=True, reads_s=True)
    layout = LAYOUT

    def __init__(self, alpha: float = 0.4, beta: float = 0.5):
        super().__init__()
        self.register_buffer("m", _unit_spectral(0))
        self.alpha, self.beta = alpha, beta
        self.inputs: list[Blocks] = []

    def inject(self, batch):
        return Blocks(batch.s_diag, batch.s_off)

    def forward(self, batch, h, injection):
        self.inputs.append(Blocks(h.diag.detach().clone(), h.off.detach().clone()))
        diag = self.alpha * self.m @ h.diag @ self.m.T + injection.diag
        return Blocks(diag, self.beta * h.off + injection.off)

    def fixed_point(self, batch) -> Blocks:
        """Solve ``(I - alpha M_r (x) M_r) vec(X) = vec(S_r)`` per atom (real slots ``r``)."""
        diag = torch.zeros_like(batch.s_diag)
        for i, real in enumerate(batch.slot_ao >= 0):
            m = self.m[real][:, real]
            n = len(m)
            rhs = batch.s_diag[i][real][:, real].reshape(-1)
            x = torch.linalg.solve(torch.eye(n * n, dtype=F64) - self.alpha * torch.kron(m, m), rhs)
            diag[i][real.nonzero()[:, 0][:, None], real.nonzero()[:, 0]] = x.view(n, n)
        return Blocks(diag, batch.s_off / (1 - self.beta))


class TanhToy(nn.Module):
    """A nonlinear contraction with learnable weights in the filter and the injection."""

    capabilities = Capabilities(reads_h=True, reads_s=True)
    layout = LAYOUT

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.m = nn.Parameter(0.6 * _unit_spectral(2))
        self.w_off = nn.Parameter(0.5 * torch.rand(LAYOUT.width, LAYOUT.width, generator=g).to(F64))
        self.scale = nn.Parameter(torch.tensor([0.8, 0.3], dtype=F64))
        self.gamma = nn.Parameter(torch.tensor(0.05, dtype=F64))
        self.calls = 0

    def inject(self, batch):
        return Blocks(self.scale[0] * batch.s_diag, self.scale[1] * batch.s_off)

    def forward(self, batch, h, injection):
        self.calls += 1
        diag = torch.tanh(self.m @ h.diag @ self.m.T) + injection.diag
        coupling = self.gamma * h.diag[batch.pair_index[0]] @ batch.s_off
        return Blocks(diag, self.w_off * torch.tanh(h.off) + coupling + injection.off)


class MapToy(nn.Module):
    """``H <- fn(H)`` blockwise, for misbehaving solvers."""

    capabilities = Capabilities(reads_h=True)
    layout = LAYOUT

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def inject(self, batch):
        return None

    def forward(self, batch, h, injection):
        return Blocks(self.fn(h.diag), self.fn(h.off))


def _real(blocks: Blocks, batch) -> torch.Tensor:
    return assemble(blocks.diag, blocks.off, batch)


# ----------------------------------------------------------------------------------------------
# fixed point, diagnostics


@pytest.mark.parametrize("f_solver", ["fixed_point_iter", "anderson", "broyden"])
def test_converges_to_the_analytic_fixed_point(batch, f_solver):
    toy = LinearToy()
    config = DEQConfig(f_solver=f_solver, f_max_iter=100, f_tol=1e-10)
    deq = DEQHamiltonianSolver(toy, config).eval()
    h, diag = deq(batch)
    expect = toy.fixed_point(batch)
    torch.testing.assert_close(_real(h, batch), _real(expect, batch), atol=1e-8, rtol=0)
    g = block_gather(batch)
    assert (h.diag[~g.diag_mask] == 0).all() and (h.off[~g.off_mask] == 0).all()
    assert diag.all_converged and not diag.failed and not diag.diverged.any()
    assert diag.converged.shape == (2,) and diag.abs_trace.shape == (2, diag.nfe)
    assert 1 <= diag.nfe < 100 and len(toy.inputs) == diag.nfe
    assert (diag.nstep >= 1).all() and (diag.nstep <= diag.nfe).all()
    assert (diag.abs_residual <= 1e-10).all()
    if f_solver == "fixed_point_iter":  # a contraction in the Frobenius norm: monotone
        assert (diag.abs_trace[:, 1:] < diag.abs_trace[:, :-1]).all()
        torch.testing.assert_close(diag.abs_trace[:, -1], diag.abs_residual)


class RateToy(MapToy):
    """``H <- r H + (1 - r) S`` with each molecule's own rate ``r`` (0.9 with carbon, 0.3
    without), so molecules of one batch converge after different numbers of evaluations."""

    capabilities = Capabilities(reads_h=True, reads_s=True)

    def __init__(self):
        super().__init__(None)

    def forward(self, batch, h, injection):
        carbon = torch.zeros(batch.num_graphs, dtype=torch.bool).index_put(
            (batch.batch,), batch.z == 6, accumulate=True
        )
        rate = torch.where(carbon, 0.9, 0.3).to(F64)
        r_ii = rate[batch.batch][:, None, None]
        r_ij = rate[batch.batch[batch.pair_index[0]]][:, None, None]
        return Blocks(
            r_ii * h.diag + (1 - r_ii) * batch.s_diag, r_ij * h.off + (1 - r_ij) * batch.s_off
        )


def test_a_molecules_fixed_point_does_not_depend_on_its_batch(items):
    """Water converges slowly, methanol fast: alone and together each gets the same estimate,
    residual and step count (torchdeq's own iteration would run methanol as long as water)."""
    config = DEQConfig(f_max_iter=200, f_tol=1e-7)
    deq = DEQHamiltonianSolver(RateToy(), config).eval()
    both = Batch.from_data_list(items)
    h_both, d_both = deq(both)
    flat_both = _real(h_both, both)
    n = [int(item.n_ao) ** 2 for item in items]
    for k, item in enumerate(items):
        alone = Batch.from_data_list([item])
        h, d = deq(alone)
        part = flat_both[sum(n[:k]) : sum(n[: k + 1])]
        torch.testing.assert_close(part, _real(h, alone), atol=1e-12, rtol=0)
        assert d.nstep.item() == d_both.nstep[k].item()
        assert d.abs_residual.item() == pytest.approx(d_both.abs_residual[k].item(), rel=1e-9)
    assert d_both.nstep[1] > d_both.nstep[0]  # the two really stop at different evaluations
    assert d_both.all_converged and d_both.nfe == int(d_both.nstep.max())


def test_a_broken_molecule_does_not_spoil_its_batch_mates(items):
    """A non-finite molecule is reported; its batch-mate converges as it does alone."""

    class Poisoned(LinearToy):
        def forward(self, batch, h, injection):
            out = super().forward(batch, h, injection)
            bad = (batch.z == 6).any()  # methanol's atoms are poisoned after the first step
            scale = torch.where(batch.z == 6, float("nan"), 1.0).to(F64)
            if len(self.inputs) > 1 and bad:
                return Blocks(out.diag * scale[:, None, None], out.off)
            return out

    config = DEQConfig(f_max_iter=100, f_tol=1e-9, on_failure="report")
    both = Batch.from_data_list(items)
    h_both, diag = DEQHamiltonianSolver(Poisoned(), config).eval()(both)
    assert diag.nonfinite and diag.converged.tolist() == [True, False]
    water = Batch.from_data_list(items[:1])
    h_alone, alone = DEQHamiltonianSolver(Poisoned(), config).eval()(water)
    n = int(items[0].n_ao) ** 2
    torch.testing.assert_close(_real(h_both, both)[:n], _real(h_alone, water), atol=1e-12, rtol=0)
    assert alone.nstep[0] == diag.nstep[0]
    with pytest.raises(DEQFailure, match=r"mol_id \[1\]"):
        DEQHamiltonianSolver(Poisoned(), DEQConfig(f_max_iter=100, f_tol=1e-9)).eval()(both)


def test_one_iteration_is_reported_as_not_converged(batch):
    deq = DEQHamiltonianSolver(LinearToy(), DEQConfig(f_max_iter=1, f_tol=1e-10)).eval()
    _, diag = deq(batch)
    assert diag.nfe == 1 and diag.nstep.tolist() == [1, 1]
    assert not diag.converged.any() and not diag.diverged.any() and not diag.failed
    assert diag.summary()["converged"] == 0.0


def test_identity_start_and_training_bookkeeping(batch):
    toy = LinearToy()
    config = DEQConfig(f_max_iter=60, f_tol=1e-9, grad="implicit")
    deq = DEQHamiltonianSolver(toy, config).train()
    _, diag = deq(batch)
    first = toy.inputs[0]
    eye = identity_blocks(batch)
    assert torch.equal(first.diag, eye.diag) and torch.equal(first.off, eye.off)
    real = batch.slot_ao >= 0
    assert torch.equal(eye.diag.diagonal(dim1=1, dim2=2), real.to(F64))
    # IFT adds one evaluation with grad after the solve; nfe counts the solve only
    assert len(toy.inputs) == diag.nfe + 1 and diag.all_converged
    toy.inputs.clear()
    with torch.no_grad():  # training mode without grad: the same solve, no gradient pass
        _, again = deq(batch)
    assert len(toy.inputs) == again.nfe == diag.nfe


@pytest.mark.parametrize("grad", ["phantom", "implicit"])
def test_training_residual_is_f_of_the_estimate_minus_the_estimate(batch, grad):
    """``f(H*) - H*`` for the fixed-point penalty: the training output minus it is the estimate
    the eval-mode solve returns (same iterations), and it carries the gradient through f."""
    toy = TanhToy()
    config = DEQConfig(f_max_iter=4, f_tol=1e-30, grad=grad, residual_weight=1.0)
    deq = DEQHamiltonianSolver(toy, config).train()
    out, diag = deq(batch)
    assert diag.residual is not None and diag.residual.diag.requires_grad
    with torch.no_grad():
        estimate, eval_diag = deq.eval()(batch)
    assert eval_diag.residual is None
    torch.testing.assert_close(
        _real(Blocks(out.diag - diag.residual.diag, out.off - diag.residual.off), batch),
        _real(estimate, batch),
    )
    penalty = fixed_point_penalty(diag.residual, batch)
    loss = training_loss(out, diag, batch, 2.0)
    torch.testing.assert_close(loss, hamiltonian_loss(out, batch) + 2 * penalty)
    grads = torch.autograd.grad(penalty, [toy.m, toy.w_off])
    assert all(bool(g.abs().sum() > 0) for g in grads)


# ----------------------------------------------------------------------------------------------
# gradients


def _grads(toy: TanhToy, batch, h: Blocks) -> torch.Tensor:
    target = assemble(batch.h_diag, batch.h_off, batch)
    loss = ((_real(h, batch) - target) ** 2).sum()
    grads = torch.autograd.grad(loss, list(toy.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.fixture
def unrolled_grad(batch):
    """Gradient through 150 plain iterations from the identity (converged to ~1e-17).

    Padding is zeroed after every step, as the wrapper hands the solver zero-padded blocks.
    """
    toy = TanhToy()
    g = block_gather(batch)
    h, injection = identity_blocks(batch), toy.inject(batch)
    for _ in range(150):
        h = toy(batch, h, injection)
        h = Blocks(h.diag * g.diag_mask, h.off * g.off_mask)
    return _grads(toy, batch, h)


@pytest.mark.parametrize(
    "settings",
    [
        {"grad": "implicit"},
        {"grad": "implicit", "f_solver": "anderson", "b_solver": "anderson", "core": "indexing"},
        {"grad": "phantom", "phantom_steps": 80},
        {"grad": "phantom", "phantom_steps": 80, "core": "indexing"},
    ],
    ids=["ift-fixed-point", "ift-anderson-indexing", "phantom-80", "phantom-80-indexing"],
)
def test_gradient_matches_unrolled_iteration(batch, unrolled_grad, settings):
    config = DEQConfig(f_max_iter=200, f_tol=1e-13, b_max_iter=200, b_tol=1e-13, **settings)
    toy = TanhToy()
    deq = DEQHamiltonianSolver(toy, config).train()
    h, diag = deq(batch)
    assert diag.all_converged
    got = _grads(toy, batch, h)
    err = (got - unrolled_grad).norm() / unrolled_grad.norm()
    assert err < 1e-4, f"relative gradient error {err:.2e}"


def test_implicit_backward_statistics(batch):
    config = DEQConfig(grad="implicit", f_tol=1e-10, b_tol=1e-10, b_max_iter=100)
    deq = DEQHamiltonianSolver(TanhToy(), config).train()
    h, _ = deq(batch)
    assert deq.last_backward is None  # filled by the backward pass
    _real(h, batch).square().sum().backward()
    assert deq.last_backward["nstep"].shape == (2,)
    assert (deq.last_backward["abs_residual"] <= config.b_tol).all()


def test_one_step_phantom_gradient_is_only_an_approximation(batch, unrolled_grad):
    config = DEQConfig(f_max_iter=200, f_tol=1e-13)  # the default: 1-step phantom gradient
    toy = TanhToy()
    h, _ = DEQHamiltonianSolver(toy, config).train()(batch)
    err = (_grads(toy, batch, h) - unrolled_grad).norm() / unrolled_grad.norm()
    assert err > 1e-3  # the mapping onto torchdeq's grad/ift really changes the gradient


# ----------------------------------------------------------------------------------------------
# failures


def test_eval_damping_converges_an_oscillating_map_to_its_fixed_point(batch):
    """H <- 1 - 1.5 H has the fixed point H* = 0.4 (every entry) and the eigenvalue -1.5: the
    plain iteration oscillates away from it; damped with tau = 0.5 (eigenvalue -0.25) it
    converges there, in eval mode only (eval_f_tau), the training solve keeping f_tau."""
    toy = MapToy(lambda x: 1 - 1.5 * x)
    plain = DEQConfig(f_max_iter=6, eval_f_max_iter=60, f_tol=1e-9)
    _, undamped = DEQHamiltonianSolver(toy, plain).eval()(batch)
    assert not undamped.converged.any()
    damped = DEQHamiltonianSolver(toy, plain.model_copy(update={"eval_f_tau": 0.5})).eval()
    h, diag = damped(batch)
    assert diag.all_converged and (diag.abs_residual <= 1e-9).all()
    real = _real(h, batch)
    torch.testing.assert_close(real[real != 0], torch.full_like(real[real != 0], 0.4))
    with torch.no_grad():  # a training-mode solve (no graph) is the undamped one
        _, training = damped.train()(batch)
    assert not training.converged.any()
    with pytest.raises(ValueError, match="eval_f_tau"):
        DEQConfig(f_solver="broyden", eval_f_tau=0.5)


def test_diverging_solver_is_reported(batch):
    deq = DEQHamiltonianSolver(MapToy(lambda x: 2 * x + 1)).eval()
    _, diag = deq(batch)
    assert not diag.converged.any() and diag.diverged.all() and not diag.failed
    assert diag.nfe == 40 and diag.summary()["diverged"] == 1.0


@pytest.mark.parametrize("f_solver", ["fixed_point_iter", "anderson"])
def test_nan_is_raised_or_reported_never_hidden(batch, f_solver):
    nan = MapToy(lambda x: x * float("nan"))
    with pytest.raises(DEQFailure, match="non-finite") as info:
        DEQHamiltonianSolver(nan, DEQConfig(f_solver=f_solver)).eval()(batch)
    assert isinstance(info.value, DeqhError) and "mol_id [0, 1]" in str(info.value)
    config = DEQConfig(f_solver=f_solver, on_failure="report")
    _, diag = DEQHamiltonianSolver(nan, config).eval()(batch)
    assert diag.nonfinite and diag.failed and diag.diverged.all() and not diag.converged.any()


def test_predictors_are_refused():
    class Predictor(MapToy):
        capabilities = Capabilities(reads_h=False)

    with pytest.raises(DeqhError, match="reads_h"):
        DEQHamiltonianSolver(Predictor(lambda x: x))


# ----------------------------------------------------------------------------------------------
# config


class _Recording(dict):
    """A dict that remembers which keys torchdeq reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize(
    "config",
    [
        DEQConfig(),
        DEQConfig.preset("qh9", grad="implicit", f_solver="anderson", b_solver="broyden"),
        DEQConfig(core="indexing", grad="phantom", phantom_steps=3, phantom_tau=0.6),
    ],
)
def test_every_torchdeq_arg_is_read_by_torchdeq(config):
    args = _Recording(config.torchdeq_args())
    deq = get_deq(args)
    assert set(args) <= args.read, f"torchdeq ignores {set(args) - args.read}"
    assert type(deq).__name__ == {"sliced": "DEQSliced", "indexing": "DEQIndexing"}[config.core]
    assert (deq.f_max_iter, deq.b_max_iter) == (config.f_max_iter, config.b_max_iter)
    assert (deq.f_tol, deq.b_tol) == (config.f_tol, config.b_tol)
    assert (deq.f_stop_mode, deq.b_stop_mode) == (config.f_stop_mode, config.b_stop_mode)
    assert deq.eval_f_max_iter == config.f_max_iter


def test_torchdeq_silently_ignores_stop_mode_but_the_config_refuses_it():
    args = _Recording(stop_mode="rel")
    assert get_deq(args).f_stop_mode == "abs" and "stop_mode" not in args.read
    with pytest.raises(ValidationError, match="stop_mode"):
        DEQConfig(stop_mode="rel")


def test_config_validation():
    with pytest.raises(ValidationError, match="newton"):
        DEQConfig(f_solver="newton")
    with pytest.raises(ValidationError, match="b_solver"):
        DEQConfig(b_solver="adam")
    with pytest.raises(ValidationError, match="f_stop_mode"):
        DEQConfig(f_stop_mode="relative")
    with pytest.raises(ValidationError, match="Anderson"):
        DEQConfig(f_solver="anderson", f_max_iter=2)
    with pytest.raises(ValidationError, match="anderson_m"):
        DEQConfig(anderson_m=4)
    with pytest.raises(ValidationError, match="init"):
        DEQConfig(init="sap")
    assert DEQConfig(f_solver="anderson", anderson_m=4).solver_kwargs()["m"] == 4


def test_presets():
    md17, qh9 = DEQConfig.preset("md17"), DEQConfig.preset("QH9")
    assert (md17.f_max_iter, md17.b_max_iter) == (40, 40)
    assert (qh9.f_max_iter, qh9.b_max_iter) == (3, 3)
    assert md17.init == qh9.init == "identity"
    assert DEQConfig.preset("qh9", grad="implicit").grad == "implicit"
    with pytest.raises(DeqhError, match="md17"):
        DEQConfig.preset("qm9")
    with pytest.raises(ValidationError):
        DEQConfig.preset("md17", f_max_iterations=3)


# ----------------------------------------------------------------------------------------------
# PySCF initial guesses

RECIPE = Recipe()  # B3LYP(VWN5)/def2-SVP, grid level 3


def _pyscf(molecule, kind: str) -> np.ndarray:
    """The guess computed directly with PySCF (PySCF AO order)."""
    z, pos = molecule
    mol = gto.M(
        atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis="def2-svp", unit="Angstrom"
    )
    if kind == "1e":
        return mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    mf = dft.RKS(mol, xc="b3lyp5")
    mf.grids.level = 3
    return mf.get_fock(dm=scf.hf.init_guess_by_minao(mol))


@pytest.mark.parametrize(
    "molecules, kind", [([WATER, METHANOL], "1e"), ([WATER], "minao")], ids=["1e", "minao"]
)
def test_initial_guess_blocks_and_first_iterate(items, molecules, kind):
    transform = InitialGuess(RECIPE, kind)
    guessed = [transform(item) for item in items[: len(molecules)]]
    for molecule, item in zip(molecules, guessed):
        back = assemble(item.h0_diag, item.h0_off, item).view(int(item.n_ao), -1)
        np.testing.assert_allclose(back.numpy(), _pyscf(molecule, kind), atol=1e-10, rtol=0)
        assert item.h0_kind == kind
    assert not hasattr(items[0], "h0_diag")  # the transform copies the item

    batch = Batch.from_data_list(guessed)
    toy = LinearToy()
    DEQHamiltonianSolver(toy, DEQConfig(init=kind, f_max_iter=3)).eval()(batch)
    assert torch.equal(toy.inputs[0].diag, batch.h0_diag)
    assert torch.equal(toy.inputs[0].off, batch.h0_off)

    other = "minao" if kind == "1e" else "1e"
    with pytest.raises(DeqhError, match="initial guesses"):
        DEQHamiltonianSolver(toy, DEQConfig(init=other)).eval()(batch)


def test_missing_initial_guess_is_a_clear_error(batch):
    with pytest.raises(DeqhError, match="InitialGuess"):
        DEQHamiltonianSolver(LinearToy(), DEQConfig(init="minao")).eval()(batch)
