"""A catalogue of bad inputs: each ends with one line naming the file, record or key and what is
wrong, a non-zero exit, and nothing written (more cases: test_checkpoint.py, test_trust.py,
test_evaluate.py)."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED
from tests.crafted import broken_copy

runner = CliRunner()
OLD_CHECKPOINT = Path(__file__).parent / "data" / "main_13b289f" / "best.pt"

CONFIGS = {
    "list.yaml": ("- 1\n- 2\n", "the top level must be a mapping of settings, not a list"),
    "dup.yaml": ("optim:\n  lr: 0.001\n  lr: 0.002\n", "line 3: key 'lr' appears twice"),
    "dup.json": ('{"optim": {"lr": 1, "lr": 2}}', "key(s) 'lr' appear twice"),
    "bad.toml": ("[optim\nlr = 1\n", "cannot parse"),
    "nan.yaml": ("optim:\n  lr: .nan\n", "optim.lr: Input should be a finite number"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_bad_config_file_is_one_line_naming_it_and_trains_nothing(name, tmp_path):
    text, message = CONFIGS[name]
    (tmp_path / name).write_text(text)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tmp_path / name), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert message in result.output and name in result.output
    assert len(result.output.strip().splitlines()) == 1  # no traceback
    assert not out.exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("optim.lr=inf", "optim.lr: Input should be a finite number"),
        ("deq.f_tol=.nan", "deq.f_tol: Input should be a finite number"),
        ("data.sizes=abc", "data.sizes: cannot read 'abc' as a size"),
        ("data.sizes=0.5/0.5/0.5", "data.sizes: fractions"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_runs(setting, message, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--set", setting, "--out", str(out)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_an_empty_qh9_selection_is_refused_and_writes_no_file(tmp_path):
    out = tmp_path / "none.db"
    result = runner.invoke(app, ["data", "qh9", str(out), "--part", "train", "--max-atoms", "1"])
    assert result.exit_code == 1
    assert "no QH9-stable molecule matches the selection" in result.output
    assert "at most 1 atoms" in result.output
    assert not out.exists()


def test_a_dataset_without_molecules_is_named_as_such(tmp_path):
    empty = tmp_path / "empty.db"
    broken_copy(empty, "DELETE FROM data")
    out = tmp_path / "run"
    for args in (["data", "check", str(empty)], ["train", "--data", str(empty), "--out", str(out)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert f"{empty}: holds no molecules (its data table is empty)" in result.output
    assert not out.exists()


def test_a_record_with_an_impossible_atomic_number_is_named(tmp_path):
    bad = tmp_path / "badz.db"
    with sqlite3.connect(f"{BUNDLED.as_uri()}?mode=ro", uri=True) as db:
        mol_id, blob = db.execute("SELECT id, Z FROM data ORDER BY id LIMIT 1").fetchone()
    z = np.frombuffer(blob, dtype="<i4").copy()
    z[0] = 120
    broken_copy(bad, "UPDATE data SET Z = ? WHERE id = ?", z.tobytes(), mol_id)
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: molecule id {mol_id}: atomic number 120 is not an element" in result.output


def test_scf_on_an_odd_electron_molecule_names_the_file_and_writes_nothing(tmp_path):
    radical = tmp_path / "oh.xyz"
    radical.write_text("2\nOH radical\nO 0 0 0\nH 0 0 0.97\n")
    out = tmp_path / "scf"
    result = runner.invoke(app, ["scf", str(OLD_CHECKPOINT), str(radical), "--out", str(out)])
    assert result.exit_code == 1
    assert f"{radical}: frame 0: 9 electrons (charge 0)" in result.output
    assert not out.exists()


def test_a_truncated_record_stops_training_at_step_0_naming_it(tmp_path):
    data = tmp_path / "trunc.db"  # every record truncated: whichever the split trains on
    broken_copy(data, "UPDATE data SET Ham = substr(Ham, 1, length(Ham) - 80)")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--steps", "1"])
    assert result.exit_code == 1
    assert f"{data}: molecule id " in result.output and ": Ham holds " in result.output
    assert not out.exists()
