"""Config loading: strict keys, types, overrides, one-line errors."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.config import (
    ExperimentConfig,
    SamplingConfig,
    apply_overrides,
    from_dict,
    load_experiment,
)
from raydistill.errors import ConfigError


def test_defaults_load():
    cfg = from_dict(ExperimentConfig, {})
    assert cfg.distill.method == "logit" and cfg.sampling.hz == 10.0


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key sampling\.hzz; valid keys: .*hz"):
        from_dict(ExperimentConfig, {"sampling": {"hzz": 3}})


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"student\.lr must be float"):
        from_dict(ExperimentConfig, {"student": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"baseline must be true or false"):
        from_dict(ExperimentConfig, {"baseline": "yes"})


@pytest.mark.parametrize("field,value", [("hz", 0), ("hz", -1.0), ("push_interval_s", 0),
                                         ("idle_s", -1)])
def test_non_positive_rates_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


def test_overrides_parse_values_as_yaml():
    data = apply_overrides({"student": {"lr": 1.0}}, ["student.lr=3e-4", "distill.top_k=8"])
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.student.lr == 3e-4 and cfg.distill.top_k == 8
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["student.lr"])


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
))
def test_fuzzed_configs_either_load_or_raise_config_error(data):
    with contextlib.suppress(ConfigError):
        from_dict(ExperimentConfig, data if isinstance(data, dict) else {"task": data})


def test_shipped_configs_load_and_say_how_to_run_them():
    from pathlib import Path

    from raydistill.config import load_experiment
    from raydistill.run import footprint_inputs

    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# make run") or text.startswith("# raydistill run"), path
        footprint_inputs(load_experiment(path))  # the region is in the table
