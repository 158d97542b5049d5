"""Dask distributed as the engine for PySCF tasks across processes and machines.

The optional extra ``pip install 'deqh[dask]'`` brings ``distributed`` (and ``dask-jobqueue`` for
SLURM/PBS). :func:`connect` turns a ``--scheduler`` value into a Dask client; :func:`dask_map`
runs one function over many tasks on it, yielding results in completion order to the caller,
which alone writes them (so each finished molecule is committed once, by one process).

What Dask gives and deqh relies on: a task whose worker dies is rescheduled on another worker
(up to ``distributed.scheduler.allowed-failures`` times, default 3; past that it comes back as
:class:`Lost`); workers may join and leave during a run (``dask-jobqueue`` adaptive clusters).
What deqh adds: at most ``2 x`` the cluster's threads tasks in flight, and every result
released the moment it is gathered, so a worker lost later never has its finished work
recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deqh_core.util.errors import DeqhError

INSTALL_HINT = "pip install 'deqh[dask]'  (Dask distributed; dask-jobqueue for slurm/pbs)"
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
SCHEDULER_HELP = (
    "Run on Dask instead of a local process pool: a scheduler address (tcp://host:8786), a "
    "scheduler file (*.json, from dask scheduler --scheduler-file), 'local' (a Dask cluster of "
    "--workers processes on this machine) or 'slurm' / 'pbs' (dask-jobqueue, --workers jobs, "
    "set up in ~/.config/dask/jobqueue.yaml). Needs: pip install distributed dask-jobqueue"
)


class ClusterError(DeqhError):
    """A scheduler that cannot be reached or set up, or Dask missing."""


@dataclass(frozen=True)
class Lost:
    """A task Dask gave up on: its workers died ``allowed-failures`` times running it (e.g.
    killed for memory). ``task`` is the argument tuple it was given."""

    task: tuple
    reason: str


def _distributed():
    try:
        import distributed  # an optional extra: imported only when a scheduler is given
    except ImportError:
        raise ClusterError(f"--scheduler needs Dask distributed: {INSTALL_HINT}") from None
    return distributed


@contextmanager
def connect(scheduler: str, workers: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (see ``SCHEDULER_HELP``), closed on exit,
    together with any cluster it started. ``workers``: processes of a ``local`` cluster, jobs of
    a ``slurm``/``pbs`` one; ignored for an address or a scheduler file (the cluster is what
    joined it)."""
    distributed = _distributed()
    cluster = None
    try:
        if scheduler == "local":
            # loopback only; one thread per worker process, whose nanny sets OMP_NUM_THREADS
            # and the BLAS thread counts to 1 (Dask's distributed.nanny.pre-spawn-environ)
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            client = distributed.Client(cluster)
        elif scheduler in JOBQUEUE:
            try:
                import dask_jobqueue  # an optional extra, for slurm/pbs only
            except ImportError:
                raise ClusterError(f"--scheduler {scheduler} needs {INSTALL_HINT}") from None
            try:
                cluster = getattr(dask_jobqueue, JOBQUEUE[scheduler])()
            except ValueError as err:
                raise ClusterError(
                    f"--scheduler {scheduler}: dask-jobqueue needs the job's cores, memory and "
                    f"queue in ~/.config/dask/jobqueue.yaml (see its docs; deqh runs one "
                    f"molecule per core): {err}"
                ) from None
            cluster.scale(jobs=workers)
            client = distributed.Client(cluster)
        elif scheduler.endswith(".json"):
            if not Path(scheduler).is_file():
                raise ClusterError(f"--scheduler {scheduler}: no such scheduler file")
            client = distributed.Client(scheduler_file=scheduler, timeout="30s")
        else:
            client = distributed.Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as err:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({err})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_single_threaded(fn: Callable[..., Any], task: tuple) -> Any:
    """``fn(*task)`` on a worker, PySCF on one thread (one molecule per worker thread)."""
    from pyscf import lib  # PySCF only where it computes (docs/architecture.md)

    if lib.num_threads() != 1:
        lib.num_threads(1)
    return fn(*task)


def dask_map(fn: Callable[..., Any], tasks: Iterable[tuple], client) -> Iterator[Any]:
    """``fn(*task)`` for every task on the client's cluster, yielded in completion order;
    a task Dask gave up on yields :class:`Lost` instead. An exception raised by ``fn`` is
    raised here, as the local pool does."""
    distributed = _distributed()
    queue = iter(tasks)
    running = distributed.as_completed()
    given: dict[str, tuple] = {}

    def top_up() -> None:
        # the cluster may grow or shrink while we run (adaptive jobqueue clusters)
        limit = max(2, 2 * sum(client.nthreads().values()))
        while len(given) < limit and (task := next(queue, None)) is not None:
            future = client.submit(_run_single_threaded, fn, task, pure=False)
            given[future.key] = task
            running.add(future)

    top_up()
    for future in running:
        task = given.pop(future.key)
        try:
            result = future.result()
        except distributed.KilledWorker as err:
            result = Lost(task, f"its Dask workers died running it ({err})")
        finally:
            # forget it at once: a worker lost later must not make Dask recompute it
            future.release()
        yield result
        top_up()


def worker_pids(client) -> dict[str, int]:
    """Process id of every worker, by worker address (for tests and diagnostics)."""
    return client.run(os.getpid)
