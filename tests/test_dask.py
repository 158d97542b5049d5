"""Labelling and H0 on Dask distributed: a LocalCluster on loopback, started and stopped here."""

import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.generate import build_tasks, generate, molecule_geometry
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB
from deqh_core.solvers.prior import PriorCache
from deqh_core.util.cluster import ClusterError, connect, worker_pids

distributed = pytest.importorskip("distributed")

# about 1.3 s a molecule on one core: long enough to kill a worker in the middle of one
RECIPE = Recipe(xc="lda,vwn", basis="def2-svp", grid_level=1)


def ethanols(n, seed=5):
    return build_tasks([molecule_geometry("CH3CH2OH")], n_copies=n, sigma=0.02, seed=seed)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


def test_dask_labels_equal_local_labels(tmp_path, cluster):
    tasks = ethanols(3)
    local, remote = tmp_path / "local.db", tmp_path / "dask.db"
    generate(tasks, local, RECIPE, progress=False)
    summary = generate(tasks, remote, RECIPE, progress=False, scheduler=cluster.scheduler_address)
    assert (summary.written, summary.failed) == (3, 0)
    with HamiltonianDB(local) as a, HamiltonianDB(remote) as b:
        assert a.ids() == b.ids() == [0, 1, 2]
        for i in a.ids():
            np.testing.assert_allclose(b.get(i).hamiltonian, a.get(i).hamiltonian, atol=1e-8)
            np.testing.assert_allclose(b.prior(i, "minao"), a.prior(i, "minao"), atol=1e-8)
    # and the H0 of `deqh data prior` on the cluster is the one stored while labelling
    cache = PriorCache(tmp_path / "elsewhere.db", RECIPE, "minao")
    structures = [(t.id, t.atomic_numbers, t.positions) for t in tasks]
    assert cache.fill(structures, progress=False, scheduler=cluster.scheduler_address) == 3
    with HamiltonianDB(local) as a:
        for t in tasks:
            np.testing.assert_allclose(
                cache.get(t.id, t.atomic_numbers, t.positions), a.prior(t.id, "minao"), atol=1e-8
            )


def test_cli_on_a_scheduler(tmp_path, cluster):
    out = tmp_path / "w.db"
    args = ["data", "generate", str(out), "--molecule", "H2O", "--xc", "lda,vwn", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert "wrote 1, failed 0" in result.output
    with HamiltonianDB(out) as db:
        assert db.ids() == [0] and db.prior_ids("minao") == {0}


# last: it kills a worker of the module's cluster (its nanny starts a new one)
def test_killed_worker_loses_and_repeats_nothing(tmp_path, cluster):
    n = 8
    tasks, out = ethanols(n), tmp_path / "run.db"
    client = distributed.Client(cluster)
    pids = worker_pids(client)
    killed: dict = {}

    def kill_a_busy_worker() -> None:
        # once a molecule is committed, kill (SIGKILL) a worker in the middle of its next one
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = out.exists() and len(HamiltonianDB(out).ids()) >= 1
            busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
            if done and busy:
                address, keys = next(iter(busy.items()))
                killed.update(address=address, keys=set(keys), done=set(HamiltonianDB(out).ids()))
                os.kill(pids[address], signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    try:
        with distributed.get_task_stream(client) as stream:
            killer.start()
            summary = generate(
                tasks, out, RECIPE, progress=False, scheduler=cluster.scheduler_address
            )
            killer.join()
        assert killed, "the worker should have been killed mid-run"
        # nothing lost: every molecule labelled, none failed, each committed once
        assert (summary.written, summary.failed, summary.skipped) == (n, 0, 0)
        with HamiltonianDB(out) as db:
            assert db.ids() == list(range(n))
            assert db.failures() == {}
        # nothing computed twice: each task finished its computation exactly once, and the
        # tasks the killed worker held finished on another worker
        computed = Counter(record["key"] for record in stream.data)
        assert len(computed) == n and set(computed.values()) == {1}, computed
        finished_on = {record["key"]: record["worker"] for record in stream.data}
        assert killed["keys"] and all(finished_on[k] != killed["address"] for k in killed["keys"])
    finally:
        client.close()


def test_scheduler_errors_are_clear(tmp_path):
    with pytest.raises(ClusterError, match="no such scheduler file"):
        with connect(str(tmp_path / "nosuch.json")):
            pass
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ClusterError, match=r"jobqueue\.yaml"):
        with connect("slurm", workers=2):
            pass
