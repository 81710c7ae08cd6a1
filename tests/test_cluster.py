"""Offline checks of cluster.yaml (AWS) with Ray's own autoscaler schema and config functions.

Nothing here reaches a cloud: Ray's AWS bootstrap module is imported against stand-in boto3 /
botocore modules whose every client call raises, and only its pure stages run.
"""

import copy
import importlib
import ipaddress
import json
import os
import re
import sys
import types
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
SSH_PORT = 22

# Hardware of the instance types we use (AWS instance type pages), written out independently of
# cluster.yaml so a wrong `resources` entry is caught: (vCPUs, GPUs).
INSTANCE_HARDWARE = {"m5.2xlarge": (8, 0), "g5.xlarge": (4, 1), "g5.12xlarge": (48, 4)}


def _load(path=CLUSTER_YAML):
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: expected a YAML mapping at top level, got {type(config).__name__}"
        )
    return config


class _NoCloud:
    """Any use of a stand-in boto3/botocore object is a cloud call: fail loudly."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "cluster.yaml test tried to create a boto3/botocore object (a cloud call)"
        )


def _stub_module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__getattr__ = lambda attr: _fail_attr(name, attr)
    return module


def _fail_attr(module, attr):
    if attr.startswith("__"):  # the import machinery probes dunders; those are not calls
        raise AttributeError(attr)
    raise RuntimeError(f"cluster.yaml test reached {module}.{attr}: that would be a cloud call")


def _aws_bootstrap_module():
    """Ray's ray.autoscaler._private.aws.config, imported without real boto3 and left out of
    sys.modules afterwards so no other test sees the stand-ins."""
    stubs = {
        "boto3": _stub_module("boto3", __version__="1.40.0", client=_NoCloud, resource=_NoCloud),
        "boto3.exceptions": _stub_module("boto3.exceptions", ResourceNotExistsError=Exception),
        "boto3.resources": _stub_module("boto3.resources"),
        "boto3.resources.base": _stub_module("boto3.resources.base", ServiceResource=_NoCloud),
        "botocore": _stub_module("botocore"),
        "botocore.client": _stub_module("botocore.client", BaseClient=_NoCloud),
        "botocore.config": _stub_module("botocore.config", Config=_NoCloud),
        "botocore.exceptions": _stub_module("botocore.exceptions", ClientError=Exception),
    }
    stubs["boto3"].exceptions = stubs["boto3.exceptions"]
    stubs["botocore"].exceptions = stubs["botocore.exceptions"]
    names = [n for n in sys.modules if n.startswith("ray.autoscaler._private.aws")]
    with mock.patch.dict(sys.modules, stubs):
        for name in names:
            sys.modules.pop(name)
        return importlib.import_module("ray.autoscaler._private.aws.config")


@pytest.fixture(autouse=True)
def _dummy_aws_env(monkeypatch):
    # Belt and braces: even a real boto3 would find fake credentials and no metadata service.
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def aws_config():
    return _aws_bootstrap_module()


@pytest.fixture(scope="module")
def raw():
    return _load()


@pytest.fixture(scope="module")
def prepared(raw):
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


# ----------------------------------------------------------------------------- the checker
def world_open_ingress(rules):
    """The ingress rules (EC2 IpPermissions) that open anything but TCP 22 to 0.0.0.0/0 or ::/0,
    as readable strings; an empty list means the rules are safe."""
    problems = []
    for rule in rules:
        protocol = str(rule.get("IpProtocol", "-1"))
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        for cidr in cidrs:
            if ipaddress.ip_network(cidr, strict=False).prefixlen != 0:
                continue
            ssh_only = protocol == "tcp" and low == SSH_PORT and high == SSH_PORT
            if not ssh_only:
                problems.append(f"{protocol} ports {low}-{high} open to {cidr}")
    return problems


def effective_ingress(config, aws_config):
    """Rules Ray puts on the security group it creates for this config: its intra-cluster and SSH
    defaults plus provider.security_group.IpPermissions (Ray's own merge function)."""
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    return aws_config._create_default_inbound_rules({"sg-cluster"}, extra)


def security_problems(config, aws_config):
    """Every reason the config could expose the cluster to the internet; empty when it cannot."""
    rules = effective_ingress(config, aws_config)
    problems = [f"cluster.yaml security group: {p}" for p in world_open_ingress(rules)]
    for name, node_type in config["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        # Groups or templates made outside this file carry rules we cannot see offline.
        for key in ("SecurityGroupIds", "LaunchTemplate", "NetworkInterfaces"):
            if key in node_config:
                problems.append(
                    f"cluster.yaml node type {name}: {key} brings rules not checked here"
                )
    return problems


def node_type_problems(config):
    """Autoscaling requirements: explicit resources everywhere, GPU workers that scale from
    zero."""
    problems = []
    head = config["head_node_type"]
    for name, node_type in config["available_node_types"].items():
        resources = node_type.get("resources")
        if not resources or "CPU" not in resources or "GPU" not in resources:
            problems.append(
                f"cluster.yaml node type {name}: resources must name CPU and GPU, got {resources}"
            )
            continue
        if name != head and node_type.get("min_workers", 0) != 0:
            problems.append(
                f"cluster.yaml node type {name}: min_workers must be 0, got "
                f"{node_type['min_workers']}"
            )
        if name != head and node_type.get("max_workers", 0) < 1:
            problems.append(f"cluster.yaml node type {name}: max_workers must be set and >= 1")
    gpu_counts = [
        t.get("resources", {}).get("GPU", 0)
        for n, t in config["available_node_types"].items()
        if n != head
    ]
    if not any(g == 1 for g in gpu_counts):
        problems.append("cluster.yaml: no 1-GPU worker type")
    if not any(g > 1 for g in gpu_counts):
        problems.append("cluster.yaml: no multi-GPU worker type for DDP trials")
    return problems


# ----------------------------------------------------------------------------- the file itself
def test_raw_file_matches_rays_autoscaler_schema(raw):
    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        jsonschema.validate(raw, json.load(f))


def test_prepare_and_validate_accept_it_and_keep_our_commands(raw, prepared):
    # prepare_config merges Ray's AWS defaults shallowly: any command list we left out would come
    # from there (a nightly wheel install, a dashboard on 0.0.0.0).
    assert "ray-wheels" not in json.dumps(prepared)
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]
    assert prepared["worker_start_ray_commands"] == raw["worker_start_ray_commands"]
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["provider"]["type"] == "aws"


def test_aws_bootstrap_stages_that_need_no_cloud(prepared, aws_config):
    with pytest.raises(RuntimeError, match="cloud call"):
        aws_config.boto3.client("ec2")
    merged = aws_config._configure_from_launch_template(prepared)
    merged = aws_config._configure_from_network_interfaces(merged)
    assert merged["available_node_types"] == prepared["available_node_types"]


def test_gpu_workers_scale_from_zero_and_declare_resources(prepared):
    assert node_type_problems(prepared) == []
    head = prepared["head_node_type"]
    assert prepared["available_node_types"][head]["resources"]["GPU"] == 0
    assert prepared["idle_timeout_minutes"] > 0


def test_resources_match_instance_hardware(prepared):
    for name, node_type in prepared["available_node_types"].items():
        cpus, gpus = INSTANCE_HARDWARE[node_type["node_config"]["InstanceType"]]
        assert node_type["resources"]["CPU"] == cpus, name
        assert node_type["resources"]["GPU"] == gpus, name


def test_only_ssh_is_open_to_the_world(prepared, aws_config):
    assert security_problems(prepared, aws_config) == []
    # Ray's defaults do open SSH to the world; the checker must accept exactly that.
    rules = effective_ingress(prepared, aws_config)
    world = [
        r for r in rules if any(x.get("CidrIp") == "0.0.0.0/0" for x in r.get("IpRanges", []))
    ]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in world] == [("tcp", 22, 22)]


def test_dashboard_and_token_auth(prepared):
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        assert any("export RAY_AUTH_MODE=token;" in c and "ray start" in c for c in commands)
    assert "--env RAY_AUTH_MODE=token" in prepared["docker"]["run_options"]
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()


def test_image_is_rayproject_gpu_of_the_pinned_ray():
    image = _load()["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert match, f"cluster.yaml docker.image {image!r}: expected rayproject/ray:X.Y.Z-pyXY-gpu"
    version, py_major, py_minor = match.group(1), match.group(2), match.group(3)
    pin = re.search(r'"ray\[[^\]]*\]>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text())
    low, high = (tuple(int(p) for p in v.split(".")) for v in pin.groups())
    as_tuple = tuple(int(p) for p in version.split("."))
    assert low <= as_tuple[: len(low)] and as_tuple[: len(high)] < high
    assert version == ray.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    requires = re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"', pyproject)
    assert py_major == "3" and int(requires.group(1)) <= int(py_minor) < int(requires.group(2))


def test_setup_installs_this_checkout(prepared):
    assert prepared["file_mounts"]["~/mgd_ray"] == "."
    assert any("pip install" in c and "-e ~/mgd_ray" in c for c in prepared["setup_commands"])


# ----------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    "rule",
    [
        {
            "IpProtocol": "tcp",
            "FromPort": 8265,
            "ToPort": 8265,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        },
        {
            "IpProtocol": "tcp",
            "FromPort": 6379,
            "ToPort": 6379,
            "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
        },
        {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 20, "ToPort": 30, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ],
)
def test_world_open_rule_other_than_ssh_is_rejected(prepared, aws_config, rule):
    config = copy.deepcopy(prepared)
    config["provider"]["security_group"]["IpPermissions"] = [rule]
    validate_config(config)  # Ray itself accepts it: the check is ours
    problems = security_problems(config, aws_config)
    assert len(problems) == 1 and "open to" in problems[0]


def test_narrow_cidr_on_dashboard_port_is_allowed(prepared, aws_config):
    config = copy.deepcopy(prepared)
    rule = {
        "IpProtocol": "tcp",
        "FromPort": 8265,
        "ToPort": 8265,
        "IpRanges": [{"CidrIp": "203.0.113.7/32"}],
    }
    config["provider"]["security_group"]["IpPermissions"] = [rule]
    assert security_problems(config, aws_config) == []


def test_unseen_security_groups_are_rejected(prepared, aws_config):
    config = copy.deepcopy(prepared)
    config["available_node_types"]["gpu_1x"]["node_config"]["SecurityGroupIds"] = ["sg-0123"]
    assert security_problems(config, aws_config) == [
        "cluster.yaml node type gpu_1x: SecurityGroupIds brings rules not checked here"
    ]


def test_node_type_checker_rejects_always_on_or_undeclared_workers(prepared):
    always_on = copy.deepcopy(prepared)
    always_on["available_node_types"]["gpu_4x"]["min_workers"] = 1
    assert node_type_problems(always_on) == [
        "cluster.yaml node type gpu_4x: min_workers must be 0, got 1"
    ]
    undeclared = copy.deepcopy(prepared)
    del undeclared["available_node_types"]["gpu_1x"]["resources"]
    problems = node_type_problems(undeclared)
    assert problems[0].startswith("cluster.yaml node type gpu_1x: resources must name CPU and GPU")
    assert "cluster.yaml: no 1-GPU worker type" in problems


def test_ray_rejects_a_broken_copy(raw):
    typo = copy.deepcopy(raw)
    typo["idle_timeout_minute"] = typo.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(typo))
    no_head = copy.deepcopy(raw)
    no_head["head_node_type"] = "head_gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(no_head))


def test_stand_in_boto3_does_not_leak(aws_config):
    # The stand-ins must not leak into other tests' imports.
    assert sys.modules.get("boto3") is not aws_config.boto3
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
