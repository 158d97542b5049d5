"""The config loader. Property-tested (hypothesis): a settings file of any text, ``--set`` of any
string and any value of any field end as a validated config or one ``ConfigError`` naming the
source, never as another exception, and never with a non-finite float inside. Versions: a config
deqh wrote keeps its meaning when a default changes."""

import math
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deqh_core.inference.loaded import load_model
from deqh_core.training.checkpoint import load_checkpoint
from deqh_core.training.config import (
    CONFIG_VERSION,
    TrainConfig,
    load_config,
    parse_override,
    resume_config,
    upgrade_config,
)
from deqh_core.util.errors import ConfigError
from deqh_core.util.files import read_settings

COMPAT = Path(__file__).parent / "data" / "main_13b289f"


def _fields(values: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        out += _fields(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return out


FIELDS = _fields(TrainConfig().model_dump(mode="json"))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(width=64)  # inf and NaN included
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)
YAML_LIKE = st.lists(
    st.sampled_from(
        ["optim:", "  lr: 1e-3", "  lr: .inf", "  lr: 2", "run:", "  seed: 1", "- 1", "a: [1",
         "model: {params: {a: 1, a: 2}}", "? [1, 2]", ": 3", "x: !!python/object/apply:exec ['1']",
         "  steps: -1", "data:", "  sizes: 0.5/0.5/0.5", "\tbad: tab", "---", ""]
    ),
    max_size=8,
).map("\n".join)  # fmt: skip


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_of_any_field_is_a_config_or_a_config_error_naming_the_field(field, value):
    nested = value
    for part in reversed(field.split(".")):
        nested = {part: nested}
    try:
        config = load_config(None, None, nested)
    except ConfigError as err:
        assert str(err).startswith("invalid configuration: ") and field.split(".")[0] in str(err)
    else:
        assert _finite(config.model_dump(mode="json"))


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(TEXTS, YAML_LIKE), suffix=st.sampled_from([".yaml", ".json", ".toml"]))
def test_any_settings_file_is_a_mapping_or_a_config_error_naming_it(tmp_path_factory, text, suffix):
    path = tmp_path_factory.getbasetemp() / f"{uuid.uuid4().hex}{suffix}"
    path.write_text(text)
    try:
        content = read_settings(path)
    except ConfigError as err:
        assert str(err).startswith(f"{path}: "), str(err)
    else:
        assert isinstance(content, dict)
        if suffix == ".yaml":  # what the plain safe loader reads, when no key repeats
            assert content == (yaml.safe_load(text) or {})


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(TEXTS, st.builds("{}={}".format, st.sampled_from(FIELDS), YAML_LIKE)))
def test_any_set_override_is_a_mapping_or_a_config_error(text):
    try:
        parsed = parse_override(text)
    except ConfigError as err:
        assert "override" in str(err)
    else:
        assert isinstance(parsed, dict) and len(parsed) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {params: {a: 1, a: 2}}\n", "key 'a' appears twice"),
        ("? [1, 2]\n: 3\n", "unhashable"),
        ("x: !!python/object/apply:exec ['1']\n", "could not determine a constructor"),
    ],
)
def test_yaml_the_safe_loader_would_take_or_crash_on_is_one_config_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: cannot parse: .*{message}"):
        read_settings(path)
    with pytest.raises(ConfigError, match=rf"^override .model\.params=.*cannot parse: .*{message}"):
        parse_override(f"model.params={text}")


# ----------------------------------------------------------------------------------------------
# config versions: what a config means does not change when a default does


def test_a_prior_is_corrected_in_the_lowdin_basis_unless_told_otherwise():
    def basis(**model):
        return load_config(None, None, {"model": model}).model.prior_basis

    assert basis(prior="minao") == "lowdin" and basis(prior="1e") == "lowdin"
    assert basis() == "ao" and basis(prior="none") == "ao"
    assert basis(prior="minao", prior_basis="ao") == "ao"
    assert load_config(None, None, {"model": {"prior": "minao"}}).version == CONFIG_VERSION
    with pytest.raises(ConfigError, match="prior_basis applies to the correction of a prior"):
        load_config(None, None, {"model": {"prior_basis": "lowdin"}})


def test_a_config_file_of_version_1_keeps_the_ao_basis(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("version: 1\nmodel:\n  prior: minao\n")
    config = load_config(None, path)
    assert config.model.prior_basis == "ao" and config.version == CONFIG_VERSION
    path.write_text(f"version: {CONFIG_VERSION + 1}\n")
    with pytest.raises(ConfigError, match=f"version: {CONFIG_VERSION + 1} is not a config ver"):
        load_config(None, path)


def test_a_checkpoint_written_before_config_versions_keeps_its_meaning(tmp_path):
    """A checkpoint's config without ``version`` is version 1: a prior without a recorded
    ``prior_basis`` was corrected in the AO basis, and is read back so."""
    state = load_checkpoint(COMPAT / "best.pt")  # written before configs had a version
    assert "version" not in state["config"] and state["config"]["model"]["prior"] == "minao"
    assert load_model(COMPAT / "best.pt").config.model.prior_basis == "lowdin"  # as recorded
    del state["config"]["model"]["prior_basis"]  # as before prior_basis existed
    resumed, changes = resume_config(state["config"], [], tmp_path)
    assert resumed.model.prior_basis == "ao" and resumed.version == CONFIG_VERSION
    assert not changes
    assert upgrade_config(state["config"])["model"]["prior_basis"] == "ao"
    assert (
        upgrade_config(state["config"], written_as=CONFIG_VERSION)["model"]
        == (state["config"]["model"])
    )
