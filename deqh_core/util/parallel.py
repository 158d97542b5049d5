"""Parallel map for PySCF work (labels, H0, SCF runs), one molecule per task: a local pool of
processes, or a Dask cluster (:mod:`deqh_core.util.cluster`) when a scheduler is given."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from deqh_core.util.cluster import connect, dask_map

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Set the thread-count variables to 1 while worker processes are spawned (they inherit
    them before numpy/pyscf load their BLAS and OpenMP runtimes)."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker() -> None:
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf import lib

    lib.num_threads(1)


def map_unordered(
    fn: Callable[..., Any], tasks: Iterable[tuple], workers: int, scheduler: str | None = None
) -> Iterator[Any]:
    """``fn(*task)`` for every task, yielded in completion order.

    ``workers == 1`` runs in this process (PySCF on one thread); otherwise a pool of spawned,
    single-threaded processes with at most ``2 * workers`` tasks in flight, so finished results
    never pile up in memory. With a ``scheduler`` (``--scheduler``, see
    :func:`deqh_core.util.cluster.connect`) the tasks run on that Dask cluster instead, and a
    task Dask gave up on yields :class:`deqh_core.util.cluster.Lost`.
    """
    if scheduler is not None:
        with connect(scheduler, workers) as client:
            yield from dask_map(fn, tasks, client)
        return
    if workers == 1:
        # PySCF only where it computes: models run without it (docs/architecture.md)
        from pyscf import lib

        with lib.with_omp_threads(1):
            for task in tasks:
                yield fn(*task)
        return
    # spawn, not fork: a forked child of a process that already ran OpenMP code can hang
    ctx = multiprocessing.get_context("spawn")
    # workers start lazily (at submit): keep the single-thread environment for the pool's life
    with single_threaded_children():
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        try:
            pending: set = set()
            queue = iter(tasks)
            while True:
                while len(pending) < 2 * workers and (task := next(queue, None)) is not None:
                    pending.add(pool.submit(fn, *task))
                if not pending:
                    return
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
