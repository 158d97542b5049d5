"""Checkpoints: read without unpickling, carry their data's identity, recipe and domain, and
resume into the directory they are given."""

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.domain import TrainingDomain
from deqh_core.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
    upgrade_checkpoint,
)
from tests.crafted import RunsCode

runner = CliRunner()
SETTINGS = [
    "model.params={channels: 4, layers: 1}",
    "model.deq=true",
    "deq.f_max_iter=2",
    "data.sizes=12/4/4",
    "optim.warmup_steps=1",
    "run.val_every=1",
    "run.dtype=float64",
]
ARGS = [a for s in SETTINGS for a in ("--set", s)]


def _train(*args):
    base = ["train", "--backbone", "tfn-mini", "--batch-size", "4", "--device", "cpu"]
    return runner.invoke(app, [*base, "--no-progress", *ARGS, *args])


@pytest.fixture(scope="module")
def run(example_plugin, tmp_path_factory):
    """A 2-step run on a copy of the bundled data, given by a path relative to the cwd."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "data").mkdir()
    shutil.copy(BUNDLED, root / "data" / "we.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = _train("--data", "data/we.db", "--steps", "2", "--out", "runs/a")
    assert result.exit_code == 0, result.output
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_checkpoint_records_recipe_identity_and_domain(run):
    state = load_checkpoint(run / "runs/a/last.pt")  # weights_only=True, RNG states included
    assert state["format"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    data = state["data"]
    assert Path(data["path"]) == (run / "data" / "we.db").resolve()
    assert data["recipe"]["xc"] == "b3lyp5" and data["recipe_note"] is None
    assert data["molecules"] == 200 and len(data["checksum"]) == 64
    # the domain summarises the training part only, as recomputed here from its ids
    dataset = HamiltonianDataset(run / "data" / "we.db", ids=state["split"]["train"])
    z_pos = [(z, pos) for _, z, pos in dataset.structures()]
    expected = TrainingDomain.from_structures(z_pos)
    assert state["domain"] == expected.as_dict()
    nn = min(
        np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1), axis=1)[:, 1].min() for _, p in z_pos
    )
    assert state["domain"]["min_distance"] == pytest.approx(nn)
    assert state["domain"]["atoms"] == [3, 9] and state["domain"]["elements"] == [1, 6, 8]


def test_rng_state_roundtrips_through_plain_types():
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.rand(5), np.random.rand(5), random.random()  # noqa: NPY002
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_a_checkpoint_that_needs_unpickling_is_refused_and_runs_nothing(run, tmp_path):
    state = load_checkpoint(run / "runs/a/last.pt")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "extra": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refused: .*'exec'.*do not load"):
        load_checkpoint(evil)
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n")
    for args in (
        ["predict", str(evil), str(xyz), "--out", str(tmp_path / "p")],
        ["evaluate", str(evil)],
    ):
        result = runner.invoke(app, [*args, "--device", "cpu", "--no-progress"])
        assert result.exit_code == 1 and "refused" in result.output, result.output
    assert not marker.exists() and not (tmp_path / "p").exists()


def test_checkpoint_upgrade_runs_no_code_and_upgrades_nothing_current(run, tmp_path):
    state = load_checkpoint(run / "runs/a/last.pt")
    marker = tmp_path / "pwned"
    old = {k: v for k, v in state.items() if k not in ("data", "domain", "format")}
    old["rng"] = {**old["rng"], "numpy": np.random.get_state()}  # noqa: NPY002 - format 1
    payloads = {
        "old_with_payload.pt": {**old, "extra": RunsCode(marker)},
        "plain_pickle.pt": RunsCode(marker),
    }
    for name, payload in payloads.items():
        torch.save(payload, tmp_path / name)
        result = runner.invoke(
            app, ["checkpoint", "upgrade", str(tmp_path / name), str(tmp_path / f"new_{name}")]
        )
        assert result.exit_code == 1 and "refused" in result.output, result.output
        assert "nothing of it was run" in result.output
        assert not marker.exists() and not (tmp_path / f"new_{name}").exists()
    current = run / "runs/a/last.pt"
    result = runner.invoke(app, ["checkpoint", "upgrade", str(current), str(tmp_path / "n.pt")])
    assert result.exit_code == 1 and "nothing to upgrade" in result.output
    assert not (tmp_path / "n.pt").exists()


def test_random_bytes_are_not_a_checkpoint_and_torchs_unsafe_advice_is_not_passed_on(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for args in (["checkpoint", "info", str(noise)], ["checkpoint", "upgrade", str(noise), "x"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert f"{noise}: not a readable checkpoint" in result.output
        assert "weights_only" not in result.output, result.output


def test_an_old_pickled_checkpoint_is_refused_with_a_way_to_convert_it(run, tmp_path):
    state = load_checkpoint(run / "runs/a/last.pt")
    old = {k: v for k, v in state.items() if k not in ("data", "domain", "format")}
    old["rng"] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - what deqh stored before format 2
        "python": random.getstate(),
    }
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="deqh checkpoint upgrade"):
        load_checkpoint(tmp_path / "old.pt")
    result = runner.invoke(
        app, ["checkpoint", "upgrade", str(tmp_path / "old.pt"), str(tmp_path / "new.pt")]
    )
    assert result.exit_code == 0, result.output
    new = load_checkpoint(tmp_path / "new.pt")
    assert torch.equal(
        new["rng"]["numpy"]["keys"], torch.from_numpy(old["rng"]["numpy"][1].astype(np.int64))
    )
    for key, value in state["model"].items():
        assert torch.equal(new["model"][key], value)
    with pytest.raises(CheckpointError, match="exists"):
        upgrade_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")


def test_resume_a_copied_run_leaves_the_original_untouched(run, tmp_path, monkeypatch):
    original = run / "runs" / "a"
    before = _snapshot(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # data/we.db of the run is not here: the recorded path is used
    result = _train("--resume", "--out", "../copy", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "optim.max_steps: 2 -> 3" in result.output and "using" in result.output
    assert load_checkpoint(copy / "last.pt")["step"] == 3
    assert "\n3,val," in (copy / "metrics.csv").read_text()
    assert _snapshot(original) == before
    assert not (elsewhere / "runs").exists()


def test_resume_refuses_changes_that_make_another_run(run, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(run / "runs" / "a", copy)
    before = _snapshot(copy)
    monkeypatch.chdir(run)
    result = _train("--resume", "--out", str(copy), "--lr", "0.5", "--set", "optim.ema=true")
    assert result.exit_code == 1
    assert "optim.lr (--lr): 0.0005 -> 0.5" in result.output and "optim.ema" in result.output
    result = _train("--resume", "--out", str(copy), "--steps", "1")
    assert result.exit_code == 1 and "already at step 2" in result.output
    other = tmp_path / "other.db"
    shutil.copy(BUNDLED, other)
    from deqh_core.data.store import HamiltonianDB

    with HamiltonianDB(other, "a") as db:  # same file plus one molecule: another dataset
        record = db.get(db.ids()[0])
        record.id = 10_000
        db.write(record)
    result = _train("--resume", "--out", str(copy), "--data", str(other))
    assert result.exit_code == 1 and "is not the dataset this run was trained on" in result.output
    assert _snapshot(copy) == before
    # the run's own file, replaced by other geometries under the same ids and recipe
    with sqlite3.connect(run / "data" / "we.db") as db:
        original = db.execute("SELECT pos FROM data WHERE id = 5").fetchone()[0]
        moved = (np.frombuffer(original, "<f8") + 0.01).astype("<f8").tobytes()
        db.execute("UPDATE data SET pos = ? WHERE id = 5", (moved,))
    try:
        result = _train("--resume", "--out", str(copy))
        assert result.exit_code == 1, result.output
        assert "the same molecule ids and recipe, but other geometries" in result.output
        result = runner.invoke(app, ["evaluate", str(copy / "last.pt"), "--no-progress"])
        assert result.exit_code == 1 and "but other geometries" in result.output, result.output
        assert _snapshot(copy) == before
    finally:
        with sqlite3.connect(run / "data" / "we.db") as db:
            db.execute("UPDATE data SET pos = ? WHERE id = 5", (original,))
    result = _train("--resume", "--out", str(tmp_path / "nothing"))
    assert result.exit_code == 1 and "no such checkpoint" in result.output
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("ema", [False, True])
def test_release_keeps_what_validation_used_and_drops_the_rest(run, tmp_path, ema):
    from deqh_core.inference.loaded import load_model
    from deqh_core.training.checkpoint import release_checkpoint

    source = run / "runs/a/last.pt"
    if ema:  # the same run as if it had averaged: EMA weights that differ from the model's
        state = load_checkpoint(source)
        state["config"]["optim"]["ema"] = True
        state["ema"] = {f"module.{k}": v + 0.01 for k, v in state["model"].items()}
        state["ema"]["n_averaged"] = torch.tensor(2)
        source = tmp_path / "ema.pt"
        torch.save(state, source)
    card = {"name": "tiny", "training_data": "bundled water/ethanol", "license": "MIT"}
    released = release_checkpoint(source, tmp_path / "tiny.pt", card)
    assert {"optimizer", "scheduler", "rng"}.isdisjoint(released) and released["ema"] is None
    which = "ema" if ema else "model"
    assert released["card"] == {**card, "weights": which, "released_from_step": 2}
    assert released["data"]["path"] == "we.db" and released["config"]["run"]["out"] == "a"
    original, shipped = load_model(source), load_model(tmp_path / "tiny.pt")
    assert original.weights == which and shipped.weights == "model"
    for name, value in original.model.state_dict().items():
        torch.testing.assert_close(shipped.model.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="exists"):
        release_checkpoint(source, tmp_path / "tiny.pt", card)
    result = CliRunner().invoke(app, ["checkpoint", "info", str(tmp_path / "tiny.pt")])
    assert result.exit_code == 0 and '"training_data": "bundled water/ethanol"' in result.output
