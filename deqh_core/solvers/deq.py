"""The DEQ wrapper: turn a Hamiltonian solver ``H_next = f(H; Z, R, S)`` into ``H* = f(H*)``.

:class:`DEQHamiltonianSolver` wraps any
:class:`~deqh_core.solvers.protocol.HamiltonianSolver` that reads H, computes its injection
once per batch, starts from an initial Hamiltonian (the identity, as in the paper, or a PySCF
guess, paper Fig. 4b) and lets torchdeq find the fixed point and provide
the gradient (implicit differentiation or phantom gradient). :class:`DEQConfig` is the versioned
configuration; :meth:`DEQConfig.torchdeq_args` is exactly what ``torchdeq.get_deq`` reads.

The fixed-point state
---------------------
Each molecule of a batch is its own fixed-point problem. torchdeq treats dimension 0 of the state
as the batch (residuals, stopping, choice of the best iterate and Anderson mixing are per row),
so the state is ``[n_molecules, L]``: row ``b`` holds molecule ``b``'s full matrix (its ``n_ao**2``
entries in the data's AO order, i.e. :func:`~deqh_core.ao.blocks.assemble` of the blocks) padded
with zeros to the largest ``L = max n_ao**2`` of the batch. Block padding never enters the state,
and residuals are Frobenius norms of full-matrix differences, in Hartree:
``abs = ||f(H) - H||_F``, ``rel = abs / (||f(H)||_F + 1e-9)``, as torchdeq defines them.
(The public DEQHNet code hands torchdeq ``[n_blocks, A, A]`` instead, so every block is stopped
and picked from its own iteration independently; we do not.)

Per-molecule stopping: ``f_solver="fixed_point_iter"`` runs :mod:`deqh_core.solvers.fixed_point`, a
fixed-point iteration registered with torchdeq in which every molecule stops (freezes) on its
own, so a molecule's fixed point and iteration count do not depend on its batch-mates, and which
keeps its bookkeeping on the device (no host synchronisation per evaluation). torchdeq's own
``fixed_point_iter`` stops the whole batch on its largest residual. Anderson and Broyden are
torchdeq's, batch-coupled: their answer for one molecule can depend on the batch.

torchdeq behaviours worth knowing (torchdeq 0.1.0), all handled here:

* ``get_deq`` silently ignores keys it does not read (``stop_mode`` instead of ``f_stop_mode``
  does nothing); :class:`DEQConfig` forbids unknown keys and the tests check that every key of
  :meth:`DEQConfig.torchdeq_args` is one torchdeq reads. It also *mutates* the dict passed in;
  we pass a fresh one.
* The solvers return the iterate with the *lowest* residual, not the last one; ``info["nstep"]``
  is the evaluation that produced it.
* The residual traces start with a ``1e8`` placeholder and are padded with the lowest value after
  an early stop; Anderson's first two evaluations are not traced at all. We therefore record our
  own trace, one entry per forward-solver evaluation, for every solver alike.
* Anderson with ``max_iter <= 2`` never mixes and returns the initial guess unchanged (and as an
  IFT backward solver returns a zero gradient); :class:`DEQConfig` rejects it.
* A NaN in any iterate leaks into the returned state through ``0 * NaN`` in torchdeq's best-iterate
  bookkeeping; we detect non-finite residuals ourselves (at the end of the solve, so that no
  evaluation waits for the host) and raise :class:`DEQFailure` (or report it, see
  ``on_failure``). The per-molecule solver freezes such a molecule at its last finite estimate.
* In training mode torchdeq returns ``f(z*)`` with the gradient attached (one more evaluation for
  IFT, ``phantom_steps`` more for the phantom gradient); in eval mode it returns ``z*`` without a
  graph and uses ``eval_f_max_iter``.
* Solver options (Anderson's ``m``/``lam``, forward damping ``tau``) are not ``get_deq`` arguments;
  they travel per call as ``solver_kwargs`` (:meth:`DEQConfig.solver_kwargs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchdeq.core as core
import torchdeq.solver as solvers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torchdeq import get_deq

from deqh_core.ao.blocks import assemble, block_gather, split
from deqh_core.solvers import fixed_point
from deqh_core.solvers.protocol import Blocks, HamiltonianSolver
from deqh_core.util.errors import DeqhError

__all__ = [
    "DEQConfig",
    "DEQDiagnostics",
    "DEQError",
    "DEQFailure",
    "DEQHamiltonianSolver",
    "DEQSetupError",
    "identity_blocks",
]


class DEQError(DeqhError):
    """Base class of the DEQ wrapper's errors."""


class DEQSetupError(DEQError, ValueError):
    """The wrapper cannot run as asked: a solver that does not read H, a batch without the
    initial-guess blocks its ``init`` needs, and the like."""


class DEQFailure(DEQError, RuntimeError):
    """The fixed-point solve failed: a non-finite iterate or a numerical error in the solver."""


# ----------------------------------------------------------------------------------------------
# configuration


def _torchdeq_solvers() -> tuple[str, ...]:

    registry = getattr(solvers, "_solvers", None)  # torchdeq keeps its registry private
    if isinstance(registry, dict):
        return tuple(registry)
    return ("anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter")


def _torchdeq_cores() -> tuple[str, ...]:

    registry = getattr(core, "_core", None)
    return tuple(registry) if isinstance(registry, dict) else ("indexing", "sliced")


_PRESETS: dict[str, dict[str, Any]] = {
    # Paper Table 4: forward/backward iterations per dataset; everything else as in the public
    # DEQHNet code, which leaves torchdeq at its defaults (see DEQConfig).
    "md17": {"f_max_iter": 40, "b_max_iter": 40},
    "qh9": {"f_max_iter": 3, "b_max_iter": 3},
}


class DEQConfig(BaseModel):
    """How the fixed point is found and differentiated (a versionable config; unknown keys are
    errors).

    The paper fixes only the iteration limits (Table 4: MD17 40/40, QH9 3/3; :meth:`preset`) and
    the identity start. Everything it leaves open defaults to what the public DEQHNet code runs,
    namely torchdeq's own defaults: plain fixed-point iteration forward and backward, tolerance
    ``1e-3`` (absolute, here the Frobenius norm of ``H_{k+1} - H_k`` per molecule, Hartree),
    core ``"sliced"`` and the 1-step phantom gradient (``grad="phantom"``, ``phantom_steps=1``,
    ``tau=1``, i.e. Jacobian-free backpropagation). With that gradient torchdeq runs no backward
    solver, so the paper's "backward iterations" only take effect with ``grad="implicit"``.

    Attributes:
        f_solver: forward solver: ``fixed_point_iter`` (fixed-point iteration stopped per
            molecule, :mod:`deqh_core.solvers.fixed_point`) or a name in torchdeq's solver registry
            (``anderson``, ``broyden``, ``simple_fixed_point_iter``; batch-coupled).
        b_solver: torchdeq solver of the implicit-gradient linear system (``grad="implicit"``).
        f_max_iter: most forward-solver evaluations of the backbone per batch (training).
        b_max_iter: most backward-solver iterations (``grad="implicit"`` only).
        f_tol, b_tol: stopping tolerances of the forward / backward solver, in the unit of
            ``f_stop_mode`` / ``b_stop_mode`` (``"abs"``: Hartree; ``"rel"``: dimensionless).
        eval_f_max_iter: forward limit in eval mode (default: ``f_max_iter``).
        grad: ``"implicit"`` (implicit function theorem; the backward solver solves
            ``g = J^T g + dL/dH*``) or ``"phantom"`` (backpropagate through ``phantom_steps``
            damped evaluations from the detached fixed point).
        phantom_steps, phantom_tau: phantom-gradient steps and damping
            (``H <- tau f(H) + (1 - tau) H``); used with ``grad="phantom"`` only.
        core: torchdeq computational graph, ``"sliced"`` (torchdeq's default) or ``"indexing"``;
            identical for one sampled state, as here.
        f_tau: damping of the forward solver (``fixed_point_iter``, ``anderson``,
            ``simple_fixed_point_iter``; Broyden has none): ``H <- tau f(H) + (1 - tau) H``,
            which has the same fixed points.
        eval_f_tau: the damping in eval mode (default: ``f_tau``). A trained map whose
            Jacobian has eigenvalues below -1 at some molecules' fixed points makes the plain
            iteration oscillate there; ``tau = 0.5`` maps an eigenvalue ``lam`` to
            ``(1 + lam) / 2`` and converges them (docs/training.md).
        anderson_m, anderson_lam: Anderson history size and regularisation.
        init: initial Hamiltonian: ``"identity"`` (paper default) or the PySCF guess
            ``"minao"`` / ``"1e"``, read from the batch (:class:`InitialGuess` puts it there).
        on_failure: ``"raise"`` a :class:`DEQFailure` when an iterate was non-finite (checked
            once the solve ends), or ``"report"`` it in :class:`DEQDiagnostics` and return the
            estimate.
        sync_every: on CUDA, evaluations between the per-molecule solver's tests whether every
            molecule has stopped (each test waits for the GPU); on the CPU it tests after every
            evaluation. Results do not depend on it, only the number of evaluations run.
        feedback: what of the current iterate the backbone reads: ``"diagonal"`` (the on-site
            blocks, through the diagonal reduction: the paper) or ``"full"`` (also every
            off-diagonal block ``H_ij``, as equivariant pair features: its Clebsch-Gordan
            expansion, :class:`~deqh_core.ao.expansion.BlockExpansion`), for a backbone whose
            capabilities say ``reads_pairs``.
        residual_weight: weight of the fixed-point penalty added to the training loss
            (:func:`deqh_core.training.metrics.training_loss`): RMSE + MAE of ``f(H*) - H*``
            over the valid block entries, with the gradient through ``f``. 0 is the paper's
            loss. The penalty forces a reachable fixed point when ``f_max_iter`` is too small
            for the solve to converge, at the price of a slower fit (docs/training.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    f_solver: str = "fixed_point_iter"
    b_solver: str = "fixed_point_iter"
    f_max_iter: int = Field(40, ge=1)
    b_max_iter: int = Field(40, ge=1)
    f_tol: float = Field(1e-3, gt=0)
    b_tol: float = Field(1e-6, gt=0)
    f_stop_mode: Literal["abs", "rel"] = "abs"
    b_stop_mode: Literal["abs", "rel"] = "abs"
    eval_f_max_iter: int | None = Field(None, ge=1)
    grad: Literal["implicit", "phantom"] = "phantom"
    phantom_steps: int = Field(1, ge=1)
    phantom_tau: float = Field(1.0, gt=0, le=1)
    core: Literal["sliced", "indexing"] = "sliced"
    f_tau: float = Field(1.0, gt=0, le=1)
    eval_f_tau: float | None = Field(None, gt=0, le=1)
    anderson_m: int = Field(6, ge=1)
    anderson_lam: float = Field(1e-4, gt=0)
    init: Literal["identity", "minao", "1e"] = "identity"
    feedback: Literal["diagonal", "full"] = "diagonal"
    on_failure: Literal["raise", "report"] = "raise"
    residual_weight: float = Field(0.0, ge=0)
    sync_every: int = Field(4, ge=1)

    @field_validator("f_solver", "b_solver")
    @classmethod
    def _registered_solver(cls, name: str) -> str:
        known = _torchdeq_solvers()
        if name not in known:
            raise ValueError(f"torchdeq has no solver {name!r}; registered: {', '.join(known)}")
        return name

    @field_validator("core")
    @classmethod
    def _registered_core(cls, name: str) -> str:
        if name not in _torchdeq_cores():
            raise ValueError(f"torchdeq has no DEQ core {name!r}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> DEQConfig:
        forward = {"f_max_iter": self.f_max_iter, "eval_f_max_iter": self.eval_f_max_iter}
        if self.f_solver == "anderson":
            for key, value in forward.items():
                if value is not None and value < 3:
                    raise ValueError(
                        f"{key}={value} with f_solver='anderson': torchdeq's Anderson needs at "
                        "least 3 evaluations and returns the initial guess unchanged otherwise"
                    )
        if self.grad == "implicit" and self.b_solver == "anderson" and self.b_max_iter < 3:
            raise ValueError(
                f"b_max_iter={self.b_max_iter} with b_solver='anderson': torchdeq's Anderson "
                "needs at least 3 iterations and returns a zero gradient otherwise"
            )
        if self.f_solver != "anderson":
            # values equal to the default are fine: a saved config round-trips every field
            stray = sorted(
                k
                for k in ("anderson_m", "anderson_lam")
                if getattr(self, k) != type(self).model_fields[k].default
            )
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to f_solver='anderson'")
        if self.f_solver == "broyden" and (
            self.f_tau != type(self).model_fields["f_tau"].default or self.eval_f_tau is not None
        ):
            raise ValueError("f_tau / eval_f_tau (damping) do not apply to f_solver='broyden'")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DEQConfig:
        """The paper's settings for ``"md17"`` (40/40 iterations) or ``"qh9"`` (3/3), with
        optional overrides."""
        try:
            values = _PRESETS[name.lower()]
        except KeyError:
            raise DEQSetupError(f"no DEQ preset {name!r}; known: {', '.join(_PRESETS)}") from None
        return cls(**{**values, **overrides})

    def torchdeq_args(self) -> dict[str, Any]:
        """The keyword arguments of ``torchdeq.get_deq``: exactly the keys torchdeq reads."""
        return {
            "core": self.core,
            "f_solver": fixed_point.NAME if self.per_molecule else self.f_solver,
            "b_solver": self.b_solver,
            "f_max_iter": self.f_max_iter,
            "b_max_iter": self.b_max_iter,
            "f_tol": self.f_tol,
            "b_tol": self.b_tol,
            "f_stop_mode": self.f_stop_mode,
            "b_stop_mode": self.b_stop_mode,
            "eval_f_max_iter": self.eval_f_max_iter or self.f_max_iter,
            "ift": self.grad == "implicit",
            # read by torchdeq in both modes; with ift the IFT gradient replaces the phantom one
            "grad": self.phantom_steps,
            "tau": self.phantom_tau,
        }

    @property
    def per_molecule(self) -> bool:
        """Whether the forward solver stops every molecule on its own."""
        return self.f_solver == "fixed_point_iter"

    def solver_kwargs(
        self, device: torch.device | None = None, evaluation: bool = False
    ) -> dict[str, Any]:
        """Per-call options of the forward solver (torchdeq's ``solver_kwargs``), in eval mode
        with ``evaluation``."""
        tau = self.eval_f_tau if evaluation and self.eval_f_tau is not None else self.f_tau
        if self.per_molecule:
            cuda = device is not None and torch.device(device).type == "cuda"
            return {"tau": tau, "check_every": self.sync_every if cuda else 1}
        if self.f_solver == "broyden":
            return {}
        kwargs: dict[str, Any] = {"tau": tau}
        if self.f_solver == "anderson":
            kwargs.update(m=self.anderson_m, lam=self.anderson_lam)
        return kwargs


# ----------------------------------------------------------------------------------------------
# diagnostics


@dataclass(frozen=True)
class DEQDiagnostics:
    """What the forward solve did, per molecule of the batch (tensors on the CPU).

    Attributes:
        nfe: evaluations of the backbone by the forward solver (excluding the gradient's).
        nstep: ``[n_molecules]`` evaluation that produced the returned estimate (torchdeq's
            ``nstep``; 0 if none beat the initial guess).
        abs_trace, rel_trace: ``[n_molecules, nfe]`` residual of every evaluation,
            ``||f(H) - H||_F`` (Hartree) and that divided by ``||f(H)||_F``.
        abs_residual, rel_residual: ``[n_molecules]`` the lowest residual of the solve, as
            torchdeq measures it: the size of the step ``|f(H) - H|`` whose result ``f(H)`` is
            the returned estimate.
        stop_mode, tol: the criterion: converged means ``{stop_mode}_residual <= tol``.
        converged: ``[n_molecules]`` bool.
        diverged: ``[n_molecules]`` bool: not converged and the last residual is larger than the
            first (the iteration ended farther from a fixed point than it started), or
            non-finite.
        nonfinite: an iterate (or its residual) was NaN or inf.
        error: what went wrong, if anything did.
        residual: training mode with a graph only: ``f(H) - H`` of the gradient's evaluation
            (``H`` = the detached fixed-point estimate, ``f(H)`` = the returned output) in block
            form, on the model's device and with the gradient through ``f``; the input of the
            fixed-point penalty (``DEQConfig.residual_weight``). None otherwise.
    """

    nfe: int
    nstep: torch.Tensor
    abs_trace: torch.Tensor
    rel_trace: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor
    stop_mode: str
    tol: float
    converged: torch.Tensor
    diverged: torch.Tensor
    nonfinite: bool
    error: str | None = None
    residual: Blocks | None = None

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def failed(self) -> bool:
        """The solve broke down (non-finite iterate or solver error), as opposed to merely not
        converging within ``f_max_iter``."""
        return self.nonfinite or self.error is not None

    def summary(self) -> dict[str, float]:
        """Scalars for logging: evaluations, mean/max nstep, worst final residuals, fractions
        of converged and diverged molecules."""
        return {
            "nfe": float(self.nfe),
            "nstep_mean": float(self.nstep.double().mean()),
            "nstep_max": float(self.nstep.max()),
            "abs_residual_max": float(self.abs_residual.max()),
            "rel_residual_max": float(self.rel_residual.max()),
            "converged": float(self.converged.double().mean()),
            "diverged": float(self.diverged.double().mean()),
        }


# ----------------------------------------------------------------------------------------------
# state packing


class _State:
    """Maps between a batch's blocks and the padded per-molecule state ``[n_molecules, L]``."""

    def __init__(self, batch):
        self.batch = batch
        g = block_gather(batch)
        area = g.n_ao * g.n_ao
        self.n_molecules = len(area)
        self.width = int(area.max())
        molecule = torch.repeat_interleave(torch.arange(self.n_molecules, device=area.device), area)
        local = torch.arange(g.size, device=area.device) - g.offset[molecule]
        self.index = molecule * self.width + local  # [size] position of each flat entry
        self.dense = self.n_molecules == 1

    def pack(self, blocks: Blocks) -> torch.Tensor:
        flat = assemble(blocks.diag, blocks.off, self.batch)
        if self.dense:
            return flat[None]
        state = flat.new_zeros(self.n_molecules * self.width)
        return state.index_put((self.index,), flat).view(self.n_molecules, self.width)

    def unpack(self, state: torch.Tensor) -> Blocks:
        flat = state.reshape(-1)
        if not self.dense:
            flat = flat.index_select(0, self.index)
        return Blocks(*split(flat, self.batch))


def _float_dtype(batch) -> torch.dtype:
    for key in ("pos", "s_diag", "h_diag"):
        value = getattr(batch, key, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


def identity_blocks(batch, dtype: torch.dtype | None = None) -> Blocks:
    """The identity in block form: ones on the real AO slots of each diagonal block, zero
    off-diagonal blocks and zero padding. ``diag [n_atoms, A, A]``, ``off [n_pairs, A, A]``."""
    g = block_gather(batch)
    dtype = dtype or _float_dtype(batch)
    eye = torch.eye(g.diag.shape[-1], dtype=dtype, device=g.diag.device)
    diag = eye * g.diag_mask.to(dtype)
    return Blocks(diag, torch.zeros(g.off.shape, dtype=dtype, device=g.off.device))


# ----------------------------------------------------------------------------------------------
# the wrapper


class _Recorder:
    """The function torchdeq iterates, plus the bookkeeping of the forward solve.

    With ``trace`` it records every forward evaluation's residuals (on the device) for solvers
    whose own traces are unusable (torchdeq's, see the module doc); the per-molecule solver
    reports its own. Nothing here waits for the device.
    """

    def __init__(self, solver, batch, injection, state: _State, trace: bool):
        self.solver, self.batch, self.injection = solver, batch, injection
        self.state, self.trace = state, trace
        self.active = True
        self.grad_step: tuple[torch.Tensor, torch.Tensor] | None = None
        self.abs: list[torch.Tensor] = []
        self.rel: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        h = self.state.unpack(z)
        z_next = self.state.pack(self.solver(self.batch, h, self.injection))
        # torchdeq runs its forward solver under no_grad and the gradient's evaluations with
        # grad enabled (the wrapper makes sure of that), so this tells the two apart.
        if self.active and torch.is_grad_enabled():
            self.grad_step = (z.detach(), z_next)  # the gradient's evaluation (the last wins)
        elif self.active and self.trace:
            abs_res = (z_next - z).norm(dim=1)
            self.abs.append(abs_res)
            self.rel.append(abs_res / (z_next.norm(dim=1) + 1e-9))
        return z_next


def nonfinite_message(config: DEQConfig, abs_trace: torch.Tensor, batch) -> str:
    """What to tell the user about the molecules whose iterates were not finite."""
    bad_rows = ~torch.isfinite(abs_trace).all(dim=1)
    bad = bad_rows.nonzero().flatten().tolist()
    first = int((~torch.isfinite(abs_trace[bad[0]])).nonzero()[0]) + 1
    ids = getattr(batch, "mol_id", None)
    which = f"molecule(s) {bad} of the batch"
    if isinstance(ids, torch.Tensor):
        which += f" (mol_id {ids.reshape(-1).cpu()[bad].tolist()})"
    trace = abs_trace[bad[0], :first].tolist()
    return (
        f"DEQ forward solve ({config.f_solver}) produced a non-finite Hamiltonian at evaluation "
        f"{first} for {which}; abs residual trace of the first: "
        f"{[f'{r:.3g}' for r in trace]}. The backbone's iteration map is unstable there "
        "(try a smaller learning rate, f_tau < 1, or another f_solver); set "
        "on_failure='report' to get the estimate and diagnostics instead of this error."
    )


class DEQHamiltonianSolver(nn.Module):
    """A Hamiltonian solver run to its fixed point ``H* = f(H*; Z, R, S)`` with torchdeq.

    Args:
        solver: a :class:`~deqh_core.solvers.protocol.HamiltonianSolver` with
            ``capabilities.reads_h``.
        config: how to solve and differentiate (default ``DEQConfig()``).

    ``forward(batch)`` returns ``(Blocks, DEQDiagnostics)``: the fixed point in block form
    (model order, Hartree; ``diag [n_atoms, A, A]``, ``off [n_pairs, A, A]``, zero padding) and
    what the solve did. In training mode (with grad enabled) the returned blocks carry the
    configured gradient; in eval mode, or under ``torch.no_grad``, the solve builds no graph.

    With ``grad="implicit"``, :attr:`last_backward` holds the statistics of the latest backward
    solve once ``backward()`` has run: ``nstep``, ``abs_residual``, ``rel_residual``, each
    ``[n_molecules]`` (residual of ``g = J^T g + dL/dH*``; compare with ``b_tol``).
    """

    def __init__(self, solver: HamiltonianSolver, config: DEQConfig | None = None):
        super().__init__()
        capabilities = getattr(solver, "capabilities", None)
        if capabilities is None or not getattr(capabilities, "reads_h", False):
            raise DEQSetupError(
                f"{type(solver).__name__} does not read the Hamiltonian "
                "(capabilities.reads_h is False): it is a predictor, H = f(Z, R), whose output "
                "does not feed back, so it has no fixed point to find; use it without the DEQ "
                "wrapper"
            )

        self.solver = solver
        self.config = config if config is not None else DEQConfig()
        self.deq = get_deq(**self.config.torchdeq_args())
        self.capabilities = capabilities
        self.layout = getattr(solver, "layout", None)
        self.last_backward: dict[str, torch.Tensor] | None = None

    def _record_backward(self, info: dict) -> None:
        stats = {
            "nstep": info["nstep"].detach().reshape(-1).cpu().long(),
            "abs_residual": info["abs_lowest"].detach().reshape(-1).cpu(),
            "rel_residual": info["rel_lowest"].detach().reshape(-1).cpu(),
        }
        self.last_backward = stats
        if self.config.on_failure == "raise" and not torch.isfinite(stats["abs_residual"]).all():
            raise DEQFailure(
                f"DEQ backward solve ({self.config.b_solver}) of the implicit gradient produced a "
                "non-finite gradient; the backbone's Jacobian at the fixed point is unstable "
                "(try grad='phantom' or fewer b_max_iter)"
            )

    def initial_guess(self, batch) -> Blocks:
        """The starting Hamiltonian of ``batch`` per ``config.init``, in block form."""
        dtype = _float_dtype(batch)
        if self.config.init == "identity":
            return identity_blocks(batch, dtype)
        diag, off = getattr(batch, "h0_diag", None), getattr(batch, "h0_off", None)
        if diag is None or off is None:
            raise DEQSetupError(
                f"DEQ init={self.config.init!r} needs the PySCF initial-guess blocks h0_diag / "
                "h0_off on the batch; add deqh_core.solvers.prior.InitialGuess(recipe, "
                f"{self.config.init!r}) to the dataset's transforms, or use init='identity'"
            )
        kinds = getattr(batch, "h0_kind", None)  # a str on an item, a list on a PyG batch
        kinds = {kinds} if isinstance(kinds, str) else set(kinds or ())
        if kinds - {self.config.init}:
            raise DEQSetupError(
                f"the batch holds {sorted(kinds)} initial guesses but init={self.config.init!r}"
            )
        return Blocks(diag.to(dtype), off.to(dtype))

    def report_failures(self) -> None:
        """From now on flag a molecule whose iterate was not finite in the diagnostics (its
        batch-mates kept) instead of raising (``on_failure="report"``)."""
        self.config = self.config.model_copy(update={"on_failure": "report"})

    def forward(self, batch, h_init: Blocks | None = None) -> tuple[Blocks, DEQDiagnostics]:
        """Fixed point of the wrapped solver on ``batch`` (a PyG batch of the dataset's items).

        Args:
            batch: molecules with their block tables (and ``h0_diag``/``h0_off`` for a PySCF
                ``init``).
            h_init: start from these blocks instead of ``config.init`` (e.g. a previous
                prediction).
        """
        config = self.config
        state = _State(batch)
        h0 = h_init if h_init is not None else self.initial_guess(batch)
        injection = self.solver.inject(batch)
        func = _Recorder(self.solver, batch, injection, state, trace=not config.per_molecule)
        z0 = state.pack(h0)

        train_graph = self.training and torch.is_grad_enabled()
        solver_kwargs = config.solver_kwargs(z0.device, evaluation=not self.training)
        if self.training and not train_graph:
            solver_kwargs["f_max_iter"] = config.f_max_iter  # solve as in training, no graph
        was_training = self.deq.training
        self.deq.train(train_graph)
        try:
            z_out, info = self.deq(
                func, z0, solver_kwargs=solver_kwargs, backward_writer=self._record_backward
            )
        except torch.linalg.LinAlgError as err:
            raise DEQFailure(
                f"DEQ forward solver {config.f_solver!r} failed: "
                f"{err}. This usually follows a non-finite or exploding iterate; try "
                "f_solver='fixed_point_iter' or a larger anderson_lam"
            ) from err
        finally:
            func.active = False
            self.deq.train(was_training)
        diagnostics = self._diagnostics(func, info, state.n_molecules)
        if diagnostics.nonfinite and config.on_failure == "raise":
            raise DEQFailure(nonfinite_message(config, diagnostics.abs_trace, batch))
        if train_graph and func.grad_step is not None:
            z_in, z_next = func.grad_step
            residual = state.unpack(z_next - z_in)
            diagnostics = dataclasses.replace(diagnostics, residual=residual)
        return state.unpack(z_out[-1]), diagnostics

    def _diagnostics(self, func: _Recorder, info: dict, n_molecules: int) -> DEQDiagnostics:
        config = self.config
        if config.per_molecule:
            abs_trace = info["abs_trace"].detach().cpu()
            rel_trace = info["rel_trace"].detach().cpu()
        elif func.abs:
            abs_trace = torch.stack(func.abs, 1).detach().cpu()
            rel_trace = torch.stack(func.rel, 1).detach().cpu()
        else:
            abs_trace = rel_trace = torch.zeros(n_molecules, 0)
        abs_res = info["abs_lowest"].detach().reshape(-1).cpu().to(abs_trace.dtype)
        rel_res = info["rel_lowest"].detach().reshape(-1).cpu().to(abs_trace.dtype)
        residual = abs_res if config.f_stop_mode == "abs" else rel_res
        finite_rows = torch.isfinite(abs_trace).all(1)
        converged = (residual <= config.f_tol) & finite_rows
        if abs_trace.shape[1]:
            growing = abs_trace[:, -1] > abs_trace[:, 0]
        else:
            growing = torch.zeros(n_molecules, dtype=torch.bool)
        nonfinite = not bool(torch.isfinite(abs_trace).all())
        return DEQDiagnostics(
            nfe=abs_trace.shape[1],
            nstep=info["nstep"].detach().reshape(-1).cpu().long(),
            abs_trace=abs_trace,
            rel_trace=rel_trace,
            abs_residual=abs_res,
            rel_residual=rel_res,
            stop_mode=config.f_stop_mode,
            tol=config.f_tol,
            converged=converged,
            diverged=~converged & (growing | ~finite_rows),
            nonfinite=nonfinite,
            error="non-finite iterate" if nonfinite else None,
        )
