"""Files written by an earlier release load and mean what they meant.

``tests/data/main_13b289f/`` was written by deqh at commit ``13b289f`` (before the package was
regrouped into concept subpackages) with::

    deqh train --backbone qhnet --deq --prior minao --prior-basis lowdin --steps 3 --out run \\
        --dtype float64 --set "model.params={<tests.molecules.QHNET_SMALL>}" \\
        --set data.sizes=8/4/4 --set data.batch_size=4 --set optim.warmup_steps=1 \\
        --set run.val_every=1
    deqh predict run/best.pt water.xyz --out pred

``best.pt`` and ``config.yaml`` are the run's files; ``water_prediction.npz`` keeps the
Hamiltonian, orbital energies and DEQ iterations that ``deqh predict`` of that release gave, and
``resolved_config.yaml`` what its ``deqh train --config config.yaml --print-config`` printed.
Everything here goes through the CLI, the interface that must not change. The model is float64
so that the comparison is exact to rounding: float32 models predict differently (by up to ~1e-3
Ha) since the diagonal reduction computes in float64, which removed rounding noise that
depended on a molecule's batch-mates (tests/test_deq.py).
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.training.config import CONFIG_VERSION

OLD = Path(__file__).parent / "data" / "main_13b289f"
runner = CliRunner()


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_release_predicts_what_it_predicted(tmp_path):
    result = runner.invoke(
        app, ["predict", str(OLD / "best.pt"), str(OLD / "water.xyz"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    new, old = np.load(tmp_path / "water.npz"), np.load(OLD / "water_prediction.npz")
    assert int(new["deq_nstep"]) == int(old["deq_nstep"])
    np.testing.assert_allclose(new["hamiltonian"], old["hamiltonian"], atol=1e-9)
    np.testing.assert_allclose(new["orbital_energies"], old["orbital_energies"], atol=1e-9)


def test_a_checkpoint_of_the_previous_release_is_described(tmp_path):
    result = runner.invoke(app, ["checkpoint", "info", str(OLD / "best.pt")])
    assert result.exit_code == 0, result.output
    assert "qhnet" in result.output


def test_a_config_of_the_previous_release_resolves_to_the_same_settings():
    result = runner.invoke(app, ["train", "--config", str(OLD / "config.yaml"), "--print-config"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved.pop("version") == CONFIG_VERSION  # the keys it gains...
    assert resolved["deq"].pop("feedback") == "diagonal"  # ...with the meaning it had
    assert resolved["deq"].pop("eval_f_tau") is None
    assert resolved == yaml.safe_load((OLD / "resolved_config.yaml").read_text())


def test_module_paths_of_the_previous_release_import_with_a_warning():
    import deqh_core.ao.basis
    import deqh_core.inference.evaluate

    with pytest.warns(DeprecationWarning, match="deqh_core.basis moved to deqh_core.ao.basis"):
        import deqh_core.basis as old
    assert old is deqh_core.ao.basis
    with pytest.warns(DeprecationWarning, match="deqh_core.inference.evaluate"):
        from deqh_core.evaluate import evaluate_checkpoint
    assert evaluate_checkpoint is deqh_core.inference.evaluate.evaluate_checkpoint
    with pytest.raises(ModuleNotFoundError):
        import deqh_core.no_such_module
