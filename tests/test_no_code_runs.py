"""No file a user hands deqh runs code, in any command: each command that reads a checkpoint, a
dataset, a config or recipe file, or a cache is given a crafted payload (pickle ``GLOBAL``s,
PyYAML python tags, pickled blobs in the SQLite tables) and must refuse it with a non-zero exit,
naming the file, without running it or writing anything."""

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deqh_core.ao import reduction
from deqh_core.cli import app
from deqh_core.training.checkpoint import load_checkpoint
from tests.crafted import RunsCode, broken_copy, pickled, yaml_payload

runner = CliRunner()
COMPAT = Path(__file__).parent / "data" / "main_13b289f"


@pytest.fixture
def files(tmp_path):
    """The marker a payload would write, a real checkpoint and molecule, and one crafted file of
    each kind."""
    marker = tmp_path / "pwned"
    state = load_checkpoint(COMPAT / "best.pt")
    evil_pt = tmp_path / "evil.pt"
    torch.save({**state, "note": RunsCode(marker)}, evil_pt)  # one extra key
    resumed = tmp_path / "run"  # a run directory whose last.pt carries the payload
    resumed.mkdir()
    shutil.copy(evil_pt, resumed / "last.pt")
    evil_yaml = tmp_path / "evil.yaml"
    evil_yaml.write_text(yaml_payload(marker))
    evil_db = tmp_path / "evil.db"  # every Hamiltonian blob replaced by a pickle
    broken_copy(evil_db, "UPDATE data SET Ham = ?", pickled(marker))
    return {
        "marker": marker,
        "good_pt": str(COMPAT / "best.pt"),
        "xyz": str(COMPAT / "water.xyz"),
        "pt": str(evil_pt),
        "run": str(resumed),
        "yaml": str(evil_yaml),
        "db": str(evil_db),
        "out": str(tmp_path / "out"),
    }


# command, the crafted file it reads (a key of `files`)
COMMANDS = {
    "checkpoint info": (["checkpoint", "info", "{pt}"], "pt"),
    "checkpoint upgrade": (["checkpoint", "upgrade", "{pt}", "{out}"], "pt"),
    "evaluate": (["evaluate", "{pt}", "--no-progress"], "pt"),
    "predict": (["predict", "{pt}", "{xyz}", "--out", "{out}"], "pt"),
    "scf": (["scf", "{pt}", "{xyz}", "--out", "{out}"], "pt"),
    "analyze convergence": (["analyze", "convergence", "{pt}", "--out", "{out}"], "pt"),
    "analyze --nfe-checkpoint": (
        ["analyze", "convergence", "{good_pt}", "--nfe-checkpoint", "{pt}", "--out", "{out}"],
        "pt",
    ),
    "train --resume": (["train", "--resume", "--out", "{run}", "--no-progress"], "run"),
    "train --config": (["train", "--config", "{yaml}", "--out", "{out}"], "yaml"),
    "ablate --config": (["ablate", "--config", "{yaml}", "--out", "{out}"], "yaml"),
    "predict --recipe": (["predict", "{good_pt}", "{xyz}", "--recipe", "{yaml}"], "yaml"),
    "scf --recipe": (["scf", "{good_pt}", "{xyz}", "--recipe", "{yaml}", "--out", "{out}"], "yaml"),
    "train --data": (["train", "--data", "{db}", "--out", "{out}", "--steps", "1"], "db"),
    "evaluate --data": (["evaluate", "{good_pt}", "--data", "{db}", "--no-progress"], "db"),
    "data check": (["data", "check", "{db}"], "db"),
    "analyze noise": (["analyze", "noise", "--data", "{db}", "--out", "{out}"], "db"),
    "ablate --data": (
        ["ablate", "--data", "{db}", "--variant", "qhnet", "--steps", "1", "--out", "{out}"],
        "db",
    ),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_crafted_file_is_refused_and_nothing_of_it_runs(name, files):
    args, kind = COMMANDS[name]
    result = runner.invoke(app, [a.format(**files) for a in args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # an error, no traceback
    named = files[kind] + ("/last.pt" if kind == "run" else "")
    assert named in " ".join(result.output.split()), result.output
    assert not files["marker"].exists()
    assert not Path(files["out"]).exists()


def test_a_crafted_cache_table_is_recomputed_and_nothing_of_it_runs(tmp_path, monkeypatch):
    """The on-site overlap tables of ``$DEQH_CACHE`` are read with ``allow_pickle=False``: a
    table holding a pickled object is treated as missing and computed again."""
    monkeypatch.setenv("DEQH_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    path = reduction.cache_path("def2-svp", 8)
    path.parent.mkdir(parents=True)
    np.savez(path, table=np.array([RunsCode(marker)], dtype=object), sha256="x")
    reduction.onsite_overlap_table.cache_clear()  # read from disk, not from this process
    table = reduction.onsite_overlap_table("def2-svp", 8)
    assert table.dtype == np.float64 and table.ndim == 3
    assert not marker.exists()
    with np.load(path, allow_pickle=False) as f:  # rewritten with the real table
        np.testing.assert_array_equal(f["table"], table)


def test_a_pickled_dataset_blob_is_only_ever_bytes(tmp_path):
    """SQLite blobs are read as numbers (numpy's frombuffer), never unpickled."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.db"
    broken_copy(evil, "UPDATE data SET pos = ?", pickled(marker))
    with sqlite3.connect(evil) as db:
        assert db.execute("SELECT count(*) FROM data WHERE pos = ?", (pickled(marker),)).fetchone()
    result = runner.invoke(app, ["data", "check", str(evil)])
    assert result.exit_code == 1 and str(evil) in result.output
    assert not marker.exists()
