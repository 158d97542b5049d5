"""The DDP code path: torchrun with the gloo backend on 2 CPU processes."""

import os
import subprocess
import sys

import torch

from deqh_core.training.trainer import load_checkpoint


def test_two_process_gloo_training(example_plugin, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(example_plugin), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "deqh_core",
        "train",
        "--backbone",
        "tfn-mini",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "model.params={channels: 4, layers: 1}",
        "--set",
        "data.sizes=24/4/0",
        "--set",
        "optim.warmup_steps=1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "\n3,val," in (out / "metrics.csv").read_text()  # rank 0 alone logged


def _agree_worker(rank: int, world: int, init: str, results) -> None:
    import torch.distributed as dist

    from deqh_core.training.trainer import agree

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        # rank 1 alone sees a non-finite loss, rank 0 alone is past the deadline
        results[rank] = agree([rank == 1, rank == 0, False], torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_stop_decisions_are_agreed_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    from deqh_core.training.trainer import agree

    assert agree([True, False], torch.device("cpu")) == [True, False]  # not distributed
    with mp.Manager() as manager:
        results = manager.dict()
        init = (tmp_path / "rendezvous").as_uri()
        mp.spawn(_agree_worker, args=(2, init, results), nprocs=2, join=True)
        assert dict(results) == {0: [True, True, False], 1: [True, True, False]}
