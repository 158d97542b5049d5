"""deqh data merge: shards of one labelling run merge into the unsharded file; duplicates are
kept once or refused; nothing is written when anything is wrong."""

import numpy as np
import pytest
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED
from deqh_core.data.merge import SAME_LABEL, merge
from deqh_core.data.store import HamiltonianDB
from deqh_core.util.errors import DataError

# Hartree-Fock in a minimal basis: real PySCF labels in a fraction of a second per molecule
LABEL = ["--molecule", "H2O", "--copies", "4", "--sigma", "0.02", "--xc", "hf", "--basis", "sto-3g"]


def _generate(out, *shard):
    args = ["data", "generate", str(out), *LABEL, *shard, "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def _records(path) -> dict:
    with HamiltonianDB(path) as db:
        return {r.id: r for r in db}


def test_shards_merge_into_the_unsharded_run(tmp_path):
    _generate(tmp_path / "all.db")
    _generate(tmp_path / "s0.db", "--shard", "0/2")
    _generate(tmp_path / "s1.db", "--shard", "1/2")
    shards = [str(tmp_path / "s0.db"), str(tmp_path / "s1.db")]
    result = CliRunner().invoke(app, ["data", "merge", str(tmp_path / "m.db"), *shards])
    assert result.exit_code == 0, result.output
    assert "wrote 4 molecule(s)" in result.output and "dropped 0 identical" in result.output
    merged, whole = _records(tmp_path / "m.db"), _records(tmp_path / "all.db")
    assert sorted(merged) == sorted(whole) == [0, 1, 2, 3]
    for i, record in whole.items():
        np.testing.assert_array_equal(merged[i].atomic_numbers, record.atomic_numbers)
        np.testing.assert_array_equal(merged[i].positions, record.positions)
        np.testing.assert_allclose(merged[i].hamiltonian, record.hamiltonian, rtol=0, atol=1e-8)
        assert merged[i].source == record.source
    with HamiltonianDB(tmp_path / "m.db") as a, HamiltonianDB(tmp_path / "all.db") as b:
        assert a.recipe == b.recipe
        assert a.prior_ids("minao") == b.prior_ids("minao") == {0, 1, 2, 3}  # H0 travels too
        for i in range(4):
            np.testing.assert_array_equal(a.prior(i, "minao"), b.prior(i, "minao"))
    # a shard merged again with the whole: every copy of it is the same label, kept once
    again = merge(tmp_path / "again.db", [tmp_path / "all.db", tmp_path / "s1.db"])
    assert again.written == 4 and again.duplicates == 2
    check = CliRunner().invoke(app, ["data", "check", str(tmp_path / "m.db"), "--scf-sample", "0"])
    assert check.exit_code == 0, check.output


def _copy(path, ids, recipe, change=None):
    """A file holding the bundled molecules ``ids`` under ``recipe``; ``change(record)``
    edits a record before it is written."""
    with HamiltonianDB(BUNDLED) as source, HamiltonianDB(path, "a") as out:
        out.set_recipe(recipe)
        for i in ids:
            record = source.get(i)
            if change is not None:
                change(record)
            out.write(record)


@pytest.fixture
def recipe():
    with HamiltonianDB(BUNDLED) as db:
        return db.recipe


def test_a_conflicting_duplicate_is_refused_and_nothing_written(tmp_path, recipe):
    def nudge(record):
        if record.id == 2:
            record.hamiltonian = record.hamiltonian + 10 * SAME_LABEL

    _copy(tmp_path / "a.db", [0, 1, 2], recipe)
    _copy(tmp_path / "b.db", [2, 3], recipe, nudge)
    with pytest.raises(DataError, match=r"molecule id 2: its labels in .*a\.db and .*b\.db"):
        merge(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "b.db"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "b.db"]  # no partial file

    def move(record):
        record.positions = record.positions + 0.01

    _copy(tmp_path / "c.db", [1], recipe, move)
    with pytest.raises(DataError, match="molecule id 1 has another geometry"):
        merge(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "c.db"])
    assert not (tmp_path / "m.db").exists()


def test_other_recipes_existing_output_and_repeated_inputs_are_refused(tmp_path, recipe):
    _copy(tmp_path / "a.db", [0], recipe)
    _copy(tmp_path / "b.db", [1], {**recipe, "grid_level": 5})
    with pytest.raises(DataError, match=r"another recipe .*grid_level"):
        merge(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "b.db"])
    with pytest.raises(DataError, match="given twice"):
        merge(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "a.db"])
    with pytest.raises(DataError, match="exists"):
        merge(tmp_path / "b.db", [tmp_path / "a.db"])
    assert not (tmp_path / "m.db").exists()
    result = CliRunner().invoke(app, ["data", "merge", str(tmp_path / "x.db"), "nope.db"])
    assert result.exit_code == 1 and "nope.db: no such dataset file" in result.output


def test_failures_are_kept_unless_another_input_labelled_the_molecule(tmp_path, recipe):
    _copy(tmp_path / "a.db", [0, 1], recipe)
    _copy(tmp_path / "b.db", [2], recipe)
    with HamiltonianDB(tmp_path / "b.db", "a") as db:
        db.record_failure(1, "water#1", "SCF did not converge")  # labelled in a.db
        db.record_failure(5, "water#5", "SCF did not converge")
    summary = merge(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "b.db"])
    assert (summary.written, summary.failures, summary.failures_labelled) == (3, 1, 1)
    with HamiltonianDB(tmp_path / "m.db") as db:
        assert db.ids() == [0, 1, 2] and db.failures() == {5: "SCF did not converge"}
