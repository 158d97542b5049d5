"""A catalogue of bad inputs: each ends with one line naming the file, record or key and what is
wrong, a non-zero exit, and nothing written (more cases: test_checkpoint.py, test_trust.py,
test_evaluate.py)."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED
from tests.crafted import broken_copy

runner = CliRunner()
OLD_CHECKPOINT = Path(__file__).parent / "data" / "main_13b289f" / "best.pt"
WATER = OLD_CHECKPOINT.parent / "water.xyz"

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
        ("optim=3", "optim: a section of settings (key: value), not 3"),  # not: erase optim
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


def _unchanged(*paths: Path):
    """Snapshot of files' bytes: call the result to assert none changed."""
    before = {p: p.read_bytes() for p in paths}
    return lambda: all(p.read_bytes() == b for p, b in before.items())


def test_evaluate_never_writes_over_its_inputs_or_one_output_over_another(tmp_path):
    ckpt, data = tmp_path / "best.pt", tmp_path / "data.db"
    ckpt.write_bytes(OLD_CHECKPOINT.read_bytes())
    data.write_bytes(BUNDLED.read_bytes())
    same = _unchanged(ckpt, data)
    for args, message in [
        (["--json", str(ckpt)], f"--json {ckpt} is also the checkpoint"),
        (["--data", str(data), "--csv", str(data)], f"--csv {data} is also --data"),
        (["--json", str(tmp_path / "m"), "--csv", str(tmp_path / "m")], "is also --json"),
        (["--json", str(data / "x.json")], f"--json {data / 'x.json'}: lies under {data}"),
    ]:
        result = runner.invoke(app, ["evaluate", str(ckpt), *args, "--no-progress"])
        assert result.exit_code == 1 and message in result.output, result.output
    assert same() and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "data.db"]


@pytest.mark.parametrize(
    "sql, message",
    [
        ("UPDATE meta SET value = '{not json' WHERE key = 'recipe'", "meta 'recipe' is not JSON"),
        ("ALTER TABLE data RENAME TO other", "unknown SQLite layout (tables: failures, meta, ot"),
    ],
)
def test_a_broken_table_is_named_with_the_file(sql, message, tmp_path):
    data = tmp_path / "broken.db"
    broken_copy(data, sql)
    same = _unchanged(data)
    out = tmp_path / "r"
    for args in (["data", "check", str(data)], ["train", "--data", str(data), "--out", str(out)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and f"{data}: {message}" in result.output, result.output
    assert same() and not out.exists()


@pytest.mark.parametrize("kind", ["twice", "text"])
def test_a_molecule_id_given_twice_or_not_an_integer_is_named(kind, tmp_path):
    data = tmp_path / f"{kind}.db"
    broken_copy(data, "SELECT 1")
    with sqlite3.connect(data) as db:  # the same rows in a table without a primary key
        db.execute("CREATE TABLE copy AS SELECT * FROM data")
        db.execute("DROP TABLE data")
        db.execute("ALTER TABLE copy RENAME TO data")
        if kind == "twice":
            db.execute("INSERT INTO data SELECT * FROM data WHERE id = 3")
        else:
            db.execute("UPDATE data SET id = 'abc' WHERE id = 3")
    problem = "3 is given to two molecules" if kind == "twice" else "'abc' is not"
    message = f"molecule id {problem}"
    for args in (
        ["data", "check", str(data)],
        ["evaluate", str(OLD_CHECKPOINT), "--data", str(data)],
    ):
        result = runner.invoke(app, [*args])
        assert result.exit_code == 1 and f"{data}: {message}" in result.output, result.output


def test_labels_go_into_no_other_sqlite_file_and_change_nothing_there(tmp_path):
    foreign = tmp_path / "mine.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE foo (a, b)")
        db.execute("INSERT INTO foo VALUES (1, 2)")
    same = _unchanged(foreign)
    result = runner.invoke(app, ["data", "generate", str(foreign), "--molecule", "H2", "--basis",
                                 "sto-3g", "--xc", "lda", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert f"{foreign}: an SQLite file without a 'data' table (it holds foo)" in result.output
    assert same()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for args in (
        ["train", "--out", str(taken), "--steps", "1"],
        ["train", "--out", str(taken / "run"), "--steps", "1"],
        ["ablate", "--out", str(taken), "--steps", "1", "--variant", "qhnet"],
        ["analyze", "noise", "--out", str(taken)],
        ["predict", str(OLD_CHECKPOINT), str(WATER), "--out", str(taken / "p")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and f"{taken}" in result.output, result.output
        assert "a file, not a folder" in " ".join(result.output.split()), result.output
    assert taken.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_a_checkpoint_of_an_unknown_format_is_refused_by_every_reader(tmp_path):
    from deqh_core.training.checkpoint import load_checkpoint

    state = load_checkpoint(OLD_CHECKPOINT)
    newer = tmp_path / "newer.pt"
    torch.save({**state, "format": 99}, newer)
    for args in (
        ["checkpoint", "info", str(newer)],
        ["checkpoint", "upgrade", str(newer), str(tmp_path / "x.pt")],
        ["predict", str(newer), str(WATER), "--out", str(tmp_path / "p")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert f"{newer}: checkpoint format 99, but this deqh reads formats 1 to" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["newer.pt"]


def test_bad_command_values_name_their_option(tmp_path):
    data = str(BUNDLED)
    for args, message in [
        (["analyze", "noise", "--levels", "1e-3,nan", "--out", str(tmp_path / "a")], "--levels"),
        (["analyze", "noise", "--levels", "abc", "--out", str(tmp_path / "a")], "--levels 'abc'"),
        (["analyze", "convergence", str(OLD_CHECKPOINT), "--data", data, "--split", "nope",
          "--out", str(tmp_path / "a")], "--split 'nope': not a split"),
        (["backbones", "check", "qhnet", "--prior", "bogus"], "--prior 'bogus': not a prior"),
        (["predict", str(OLD_CHECKPOINT), str(WATER), str(WATER), "--out", str(tmp_path / "p")],
         "water.xyz: given twice"),
    ]:  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_a_single_atom_is_predicted_alone_as_beside_a_molecule(tmp_path):
    """A lone atom has no atom pairs: its batch has no edges, which the layers must take."""
    from deqh_core.inference.predict import predict_files

    atom = tmp_path / "o.xyz"
    atom.write_text("1\noxygen atom\nO 0 0 0\n")
    alone = predict_files(OLD_CHECKPOINT, [atom], None)[0]
    beside = predict_files(OLD_CHECKPOINT, [WATER, atom], None, batch_size=2)[1]
    assert alone.hamiltonian.shape == (14, 14)  # O in def2-SVP
    np.testing.assert_allclose(alone.hamiltonian, beside.hamiltonian, atol=1e-5, rtol=0)
    assert alone.deq_nstep == beside.deq_nstep


def test_weights_that_do_not_fit_are_named_by_key(tmp_path):
    from deqh_core.inference.loaded import load_model
    from deqh_core.training.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(OLD_CHECKPOINT)
    key = "net.solver.solver.backbone.rbf.raw_alpha"
    for weights in (state["model"], state.get("ema") or {}):
        for name in [n for n in weights if n.endswith(key)]:
            del weights[name]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=rf"cut\.pt: weights do not fit .*Missing.*{key}"):
        load_model(tmp_path / "cut.pt")
