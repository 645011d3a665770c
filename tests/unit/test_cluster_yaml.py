"""cluster.yaml passes Ray's own launcher validation, broken copies fail with Ray's message,
and nothing but SSH is opened to the outside."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_header_gives_the_commands(config):
    text = (ROOT / "cluster.yaml").read_text()
    for cmd in ("ray up cluster.yaml", "ray dashboard cluster.yaml", "ray job submit",
                "ray down cluster.yaml"):
        assert cmd in text


def test_passes_rays_validation(config):
    prepared = prepare_config(copy.deepcopy(config))  # merges the AWS defaults, as `ray up` does
    validate_config(prepared)
    assert set(prepared["available_node_types"]) == {"head", "h100", "a100"}
    assert prepared["available_node_types"]["h100"]["resources"]["GPU"] == 8


def test_unknown_top_level_key_fails_with_rays_message(config):
    config["head_node_typo"] = "head"
    with pytest.raises(jsonschema.ValidationError, match="head_node_typo"):
        validate_config(prepare_config(config))


def test_node_type_without_node_config_fails_with_rays_message(config):
    """Ray's schema requires `node_config` and `resources` keys on every node type; prepare_config
    fills `resources` in for AWS, so the node_config is what a broken copy misses."""
    del config["available_node_types"]["a100"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="'node_config' is a required property"):
        validate_config(config)
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del config["available_node_types"]["a100"]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="'resources' is a required property"):
        validate_config(config)


def test_only_ssh_is_open_and_not_to_everyone(config):
    for perm in config["provider"]["security_group"]["IpPermissions"]:
        assert (perm["FromPort"], perm["ToPort"]) == (22, 22)
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in perm["IpRanges"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
