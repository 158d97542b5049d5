"""Paper presets: the reference training lengths and schedules, EMA that starts, --print-config."""

import pytest
import yaml
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.training.config import PRESETS, ConfigError, load_config
from deqh_core.training.trainer import _lr_lambda

# Optimiser steps of the reference training scripts (public DEQHNet / divelab QH9 configs:
# total_steps / num_training_steps), and their warm-up, final learning rate and clip norm.
REFERENCE = {
    "qh9-stable-id": (300_000, 1000, 1e-7, 5.0),
    "qh9-stable-ood": (300_000, 1000, 1e-7, 5.0),
    "qh9-dynamic-geo": (260_000, 1000, 1e-7, 5.0),
    "qh9-dynamic-mol": (260_000, 1000, 1e-7, 5.0),
    "md17-water": (200_000, 1000, 1e-8, 1.0),
    "md17-ethanol": (200_000, 1000, 1e-8, 1.0),
    "md17-malondialdehyde": (200_000, 1000, 1e-8, 1.0),
    "md17-uracil": (200_000, 1000, 1e-8, 1.0),
}


def test_every_paper_preset_has_a_reference_schedule():
    assert set(REFERENCE) == set(PRESETS) - {"cpu-small", "qh9-small"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_schedule_floors_at_the_last_step_and_ema_starts(name):
    config = load_config(name)
    o = config.optim
    if name in REFERENCE:
        assert (o.max_steps, o.warmup_steps, o.end_lr, o.clip_grad_norm) == REFERENCE[name]
    floor = o.end_lr / o.lr
    # the learning rate is still above its floor one step before the end, and there at the end
    assert _lr_lambda(config, o.max_steps - 1) > floor
    assert _lr_lambda(config, o.max_steps) == pytest.approx(floor)
    if o.ema:
        assert o.ema_start_step < o.max_steps


def test_md17_water_starts_ema_after_40_epochs():
    config = load_config("md17-water")
    steps_per_epoch = 500 // config.data.batch_size  # 500 training geometries, batch 10
    assert config.optim.ema_start_step == 40 * steps_per_epoch
    others = [n for n in REFERENCE if n.startswith("md17-") and n != "md17-water"]
    assert all(load_config(n).optim.ema_start_step == 0 for n in others)


def test_ema_that_never_starts_is_a_validation_error():
    with pytest.raises(ConfigError, match="ema_start_step=2000 is not before max_steps=1000"):
        load_config("md17-water", None, {"optim": {"max_steps": 1000}})


def test_print_config_shows_the_resolved_preset():
    result = CliRunner().invoke(app, ["train", "--preset", "qh9-stable-id", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["optim"]["max_steps"] == 300_000
    assert printed["data"]["batch_size"] == 32
    assert printed["model"]["params"]["layers"] == 5  # the backbone's defaults, filled in
    result = CliRunner().invoke(
        app, ["train", "--preset", "md17-water", "--steps", "1000", "--print-config"]
    )
    assert result.exit_code == 1 and "EMA would never start" in result.output
