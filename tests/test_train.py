"""Training engine: configs, determinism, resume, checkpoints and their errors."""

import pytest
import torch
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.training.config import ConfigError, load_config, parse_override
from deqh_core.training.trainer import CheckpointError, Trainer, load_checkpoint

SMALL = {"channels": 4, "layers": 1}


def _config(out, **optim):
    return load_config(
        None,
        None,
        {
            "model": {"backbone": "tfn-mini", "deq": True, "params": SMALL},
            "data": {"batch_size": 3, "sizes": "24/6/0"},
            "deq": {"f_max_iter": 3},
            "optim": {"max_steps": 6, "warmup_steps": 2, "ema": True, **optim},
            "run": {
                "out": str(out),
                "dtype": "float64",
                "val_every": 3,
                "log_every": 2,
                "progress": False,
            },
        },
    )


def test_resumed_run_ends_with_the_same_weights(example_plugin, tmp_path):
    straight = Trainer(_config(tmp_path / "straight"))
    straight.fit()
    first = Trainer(_config(tmp_path / "killed"))
    first.fit(stop_at_step=4)  # stopped after step 4 (validates and checkpoints there)
    resumed = Trainer(_config(tmp_path / "killed"))
    resumed.fit(resume=True)
    assert resumed.step == straight.step == 6
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    # the logs of the stopped-and-resumed run hold each step once, with the same values, plus
    # the validation the stop at step 4 ran before checkpointing
    straight_log, resumed_log = (_log_rows(tmp_path / name) for name in ("straight", "killed"))
    stop = {"step": "4", "split": "val"}
    assert [r for r in resumed_log if stop.items() - r.items()] == straight_log
    assert [(r["step"], r["split"]) for r in straight_log] == [
        ("2", "train"),
        ("3", "val"),
        ("4", "train"),
        ("6", "train"),
        ("6", "val"),
    ]
    pytest.importorskip("tensorboard")
    boards = [_board(tmp_path / name) for name in ("straight", "killed")]
    assert boards[0]["train/loss"] == boards[1]["train/loss"]
    assert [step for step, _ in boards[0]["train/loss"]] == [2, 4, 6]
    assert [step for step, _ in boards[0]["val/mae_all"]] == [3, 6]
    assert [step for step, _ in boards[1]["val/mae_all"]] == [3, 4, 6]


def _log_rows(run) -> list[dict]:
    import csv

    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def _board(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_existing_run_is_not_overwritten(example_plugin, tmp_path):
    Trainer(_config(tmp_path / "run")).fit(stop_at_step=3)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(Exception, match="already holds a run; pass --resume"):
        Trainer(_config(tmp_path / "run")).fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_checkpoint_errors(example_plugin, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    Trainer(_config(tmp_path / "run")).fit(stop_at_step=3)
    other = _config(tmp_path / "run").model_copy(
        update={"model": _config(tmp_path).model.model_copy(update={"deq": False})}
    )
    with pytest.raises(CheckpointError, match="not this run's") as err:
        Trainer(other).restore(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert "deq: True -> False" in str(err.value)  # the difference, not two whole dicts
    assert len(str(err.value)) < 200


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr: Extra inputs are not permitted"):
        load_config(None, None, parse_override("optim.lrr=1e-3"))
    with pytest.raises(ConfigError, match=r"deq\.stop_mode"):
        load_config(None, None, {"deq": {"stop_mode": "abs"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  max_steps: -1\n")
    with pytest.raises(ConfigError, match=r"in .*bad\.yaml: optim\.max_steps"):
        load_config(None, bad)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    toml = tmp_path / "run.toml"
    toml.write_text('[optim]\nlr = 1e-3\n[model]\nbackbone = "tfn-mini"\n')
    cfg = load_config("md17-water", toml, parse_override("run.seed=7"))
    assert (cfg.optim.lr, cfg.model.backbone, cfg.run.seed) == (1e-3, "tfn-mini", 7)
    assert (cfg.deq.f_max_iter, cfg.data.batch_size, cfg.optim.ema) == (40, 10, True)


def test_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path / "missing.db"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1 and "missing.db: no such" in result.output
    result = runner.invoke(app, ["train", "--set", "optim.lrr=1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "optim.lrr" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_deq_started_from_the_pyscf_core_hamiltonian(example_plugin, tmp_path):
    """deq.init=1e: the trainer puts PySCF's guess on every item and the DEQ starts there."""
    cfg = _config(tmp_path / "guess").model_copy(
        update={"deq": _config(tmp_path).deq.model_copy(update={"init": "1e"})}
    )
    trainer = Trainer(cfg)
    item = trainer.train_set[0]
    assert item.h0_kind == "1e" and item.h0_diag.shape == item.h_diag.shape
    result = trainer.fit(stop_at_step=2)
    assert result.step == 2 and result.last["deq_nfe"] >= 1


def test_a_broken_deq_solve_stops_training_with_the_molecules_named(example_plugin, tmp_path):
    """The solver only reports a non-finite iterate during training; the loop (every rank at
    once, through ``agree``) raises, naming the molecules, and writes no checkpoint."""
    from deqh_core.solvers.deq import DEQFailure

    trainer = Trainer(_config(tmp_path / "run"))
    backbone = trainer.model.net.solver.backbone
    forward = backbone.forward

    def poisoned(batch, node, injection):
        out = forward(batch, node, injection)
        return type(out)(out.diag * float("nan"), out.off)

    backbone.forward = poisoned
    with pytest.raises(DEQFailure, match=r"non-finite Hamiltonian .*mol_id"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pt").exists()
