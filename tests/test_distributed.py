"""The DDP code path: torchrun with the gloo backend on 2 CPU processes."""

import os
import subprocess
import sys

import torch

from deqh_core.train import load_checkpoint


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
