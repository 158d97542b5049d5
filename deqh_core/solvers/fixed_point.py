"""Fixed-point iteration with one stopping decision per molecule, registered with torchdeq.

torchdeq's ``fixed_point_iter`` stops a batch when its *largest* residual is below the tolerance,
so a molecule's result depends on its batch-mates: next to a hard molecule it runs more
iterations and returns another iterate than it does alone. Here every row of the state (one
molecule, :mod:`deqh_core.solvers.deq`) stops on its own: once ``|f(x) - x| < tol`` its estimate
``f(x)`` is frozen, and later evaluations of the batch neither change it nor its statistics. A
row whose residual is not finite is frozen at its best finite estimate, so one broken molecule
does not spoil the others.

Everything is bookkept on the device: the only host synchronisation is the test whether every
row has stopped, made every ``check_every`` evaluations (frozen rows cost an evaluation but
change nothing, so a later check never changes the result, only the time). The iteration is
torchdeq's otherwise (damping ``tau``, the lowest-residual estimate of each row, the same
statistics), and the solver plugs into torchdeq like its own (``get_deq(f_solver=NAME)``).
"""

from __future__ import annotations

import torch
from torchdeq.solver import register_solver
from torchdeq.solver.stat import SolverStat

NAME = "deqh_fixed_point_iter"


def per_molecule_fixed_point(
    func,
    x0: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: str = "abs",
    tau: float = 1.0,
    check_every: int = 1,
    indexing: list[int] | None = None,
    **_ignored,
) -> tuple[torch.Tensor, list, SolverStat]:
    """Find ``x = f(x)`` row by row.

    Args:
        func: ``[B, L] -> [B, L]``, rows independent.
        x0: ``[B, L]`` initial estimates.
        max_iter: most evaluations of ``func``.
        tol, stop_mode: a row stops when its ``abs`` (``|f(x) - x|``) or ``rel``
            (``abs / |f(x)|``) residual is below ``tol``.
        tau: damping, ``x <- tau f(x) + (1 - tau) x``.
        check_every: evaluations between tests whether every row has stopped (host syncs).
        indexing: evaluations whose estimates torchdeq's ``indexing`` core samples.

    Returns:
        ``(estimate [B, L], states, stats)``: per row the iterate with the lowest residual until
        it stopped; the estimates at ``indexing`` (at least the final one when asked); ``stats``
        as torchdeq's solvers give them (``abs_lowest``, ``rel_lowest``, ``nstep`` per row and
        the traces ``[B, n]``, whose entries after a row stopped repeat its final residual).
    """
    batch = x0.shape[0]
    inf = torch.full((batch,), float("inf"), dtype=x0.dtype, device=x0.device)
    best, low_abs, low_rel = x0, inf, inf
    nstep = torch.zeros(batch, dtype=x0.dtype, device=x0.device)
    done = torch.zeros(batch, dtype=torch.bool, device=x0.device)
    abs_trace, rel_trace, states = [], [], []
    x = x0
    for k in range(max_iter):
        fx = func(x)
        if tau != 1.0:
            fx = tau * fx + (1 - tau) * x
        abs_diff = (fx - x).flatten(1).norm(dim=1)
        rel_diff = abs_diff / (fx.flatten(1).norm(dim=1) + 1e-9)
        residual = abs_diff if stop_mode == "abs" else rel_diff
        finite = torch.isfinite(residual) & torch.isfinite(fx).all(dim=1)
        lowest = low_abs if stop_mode == "abs" else low_rel
        better = ~done & finite & (residual < lowest)
        best = torch.where(better[:, None], fx, best)
        low_abs = torch.where(better, abs_diff, low_abs)
        low_rel = torch.where(better, rel_diff, low_rel)
        nstep = torch.where(better, torch.full_like(nstep, k + 1), nstep)
        # traces: what this evaluation measured, or a stopped row's final residual
        abs_trace.append(torch.where(done, low_abs, abs_diff))
        rel_trace.append(torch.where(done, low_rel, rel_diff))
        done = done | ~finite | (residual < tol)
        x = torch.where(done[:, None], best, fx)
        if indexing and k + 1 in indexing:
            states.append(best)
        if (k + 1) % check_every == 0 and k + 1 < max_iter and bool(done.all()):
            break
    if indexing and not states:
        states.append(best)
    stats = SolverStat(
        abs_lowest=low_abs,
        rel_lowest=low_rel,
        abs_trace=torch.stack(abs_trace, dim=1),
        rel_trace=torch.stack(rel_trace, dim=1),
        nstep=nstep,
    )
    return best, states, stats


register_solver(NAME, per_molecule_fixed_point)
