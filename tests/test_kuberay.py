"""deploy/kuberay: the manifests against KubeRay v1.7.0's CRD schemas (shipped in
deploy/kuberay/schemas), and against cluster.yaml and the study's own parser.

The schemas are checked strictly, as `kubectl apply` does with its default field validation: a
field the schema does not list is an error. KubeRay's CEL rules (x-kubernetes-validations) cannot
be evaluated here; a test checks that the manifests set none of the fields that carry one.
"""

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from mgd_ray.cli import get_args_parser
from tests.test_cluster import INSTANCE_HARDWARE

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "deploy" / "kuberay"
SCHEMAS = {"RayCluster": "raycluster-v1.json", "RayJob": "rayjob-v1.json"}
# Kubernetes' DNS-1123 label: what a pod name part and a Service name must be.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^([0-9.]+)([KMGTPE]i|m)?$")


class ManifestError(ValueError):
    pass


def strict(schema):
    """The schema with every listed object closed: KubeRay's CRDs are structural, so an object
    with `properties` and neither additionalProperties nor preserve-unknown-fields accepts
    nothing else."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def load_schema(kind):
    return strict(json.loads((KUBERAY / "schemas" / SCHEMAS[kind]).read_text()))


def check(path, doc):
    """Raise ManifestError naming the file, the document and the field of the first error."""
    kind = doc.get("kind")
    if kind not in SCHEMAS:
        raise ManifestError(f"{path}: kind {kind!r} is not one of {sorted(SCHEMAS)}")
    errors = sorted(
        jsonschema.Draft7Validator(load_schema(kind)).iter_errors(doc),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(
            f"{path}: {kind} {doc['metadata']['name']}: {field}: {e.message} "
            f"(KubeRay v1.7.0 CRD schema)"
        )


def documents(name):
    with open(KUBERAY / name) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def one(docs, kind):
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def cluster():
    return one(documents("raycluster.yaml"), "RayCluster")


@pytest.fixture(scope="module")
def node_types():
    with open(REPO / "cluster.yaml") as f:
        return yaml.safe_load(f)


def quantity(value):
    number, unit = QUANTITY.match(str(value)).groups()
    return float(number) / (1000 if unit == "m" else 1)


def groups(cluster):
    """(name, group spec, Ray start params) of the head and every worker group."""
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    return [("head", head, head["rayStartParams"])] + [
        (g["groupName"], g, g["rayStartParams"]) for g in spec["workerGroupSpecs"]
    ]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_the_manifests_validate_against_the_kuberay_crd_schemas(name):
    docs = documents(name)
    assert any(d["kind"] in SCHEMAS for d in docs)
    for doc in docs:
        if doc["kind"] in SCHEMAS:
            check(name, doc)
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] in {
                "ServiceAccount",
                "PersistentVolumeClaim",
            }, f"{name}: unexpected {doc['kind']}"


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda s: s["workerGroupSpecs"][0].update(minReplica=0), "minReplica"),
        (lambda s: s["workerGroupSpecs"][0].update(maxReplicas="8"), "'8' is not of type"),
        (lambda s: s["authOptions"].update(mode="tokens"), "'tokens' is not one of"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}), "not of type"),
        (
            lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].update(imag="x"),
            "'imag' was unexpected",
        ),
    ],
)
def test_a_manifest_that_does_not_validate_is_named_with_its_field(cluster, edit, error):
    bad = copy.deepcopy(cluster)
    edit(bad["spec"])
    with pytest.raises(ManifestError, match="raycluster.yaml: RayCluster mgd-ray: spec") as e:
        check("raycluster.yaml", bad)
    assert error in str(e.value)


def test_the_manifests_set_no_field_that_carries_a_cel_rule():
    def rule_paths(schema, path=()):
        if schema.get("x-kubernetes-validations"):
            yield path
        for name, sub in schema.get("properties", {}).items():
            yield from rule_paths(sub, path + (name,))

    for name in ["raycluster.yaml", "rayjob.yaml"]:
        for doc in documents(name):
            if doc["kind"] not in SCHEMAS:
                continue
            paths = list(rule_paths(load_schema(doc["kind"])))
            assert paths, "the schema lost its CEL rules: is it still KubeRay's?"
            for path in paths:
                node = doc
                for key in path:
                    node = node.get(key) if isinstance(node, dict) else None
                assert node is None, f"{name}: {'.'.join(path)} has a CEL rule not checked here"


def test_the_node_types_and_resources_agree_with_cluster_yaml(cluster, node_types):
    spec = cluster["spec"]
    kinds = node_types["available_node_types"]
    by_name = {name: (group, params) for name, group, params in groups(cluster)}
    expected = {
        "head" if n == node_types["head_node_type"] else n.replace("_", "-") for n in kinds
    }
    assert set(by_name) == expected
    for type_name, node_type in kinds.items():
        is_head = type_name == node_types["head_node_type"]
        group, params = by_name["head" if is_head else type_name.replace("_", "-")]
        cpus, gpus = node_type["resources"]["CPU"], node_type["resources"]["GPU"]
        assert (params["num-cpus"], params["num-gpus"]) == (str(cpus), str(gpus)), type_name
        pod = group["template"]["spec"]
        instance = node_type["node_config"]["InstanceType"]
        assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == instance
        assert INSTANCE_HARDWARE[instance] == (cpus, gpus)
        (container,) = pod["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert (
            int(limits.get("nvidia.com/gpu", 0)) == gpus == int(requests.get("nvidia.com/gpu", 0))
        )
        # The pod fits its node (requests below the instance's vCPUs) and Ray's CPU count is the
        # node's, as on cluster.yaml.
        assert quantity(requests["cpu"]) < cpus and quantity(limits["cpu"]) <= cpus
        if not is_head:
            assert DNS_LABEL.match(group["groupName"]), group["groupName"]
            assert group["minReplicas"] == node_type["min_workers"] == 0 == group["replicas"]
            assert group["maxReplicas"] == node_type["max_workers"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
    assert sum(g["maxReplicas"] for g in spec["workerGroupSpecs"]) <= node_types["max_workers"]
    assert spec["enableInTreeAutoscaling"] is True
    assert (
        spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60 * node_types["idle_timeout_minutes"]
    )


def test_every_pod_runs_the_projects_ray_image_with_token_auth(cluster, node_types):
    base = node_types["docker"]["image"]
    (from_line,) = [
        line
        for line in (KUBERAY / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM")
    ]
    assert from_line.split() == ["FROM", base]
    assert base.startswith(f"rayproject/ray:{ray.__version__}-")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    images = {
        c["image"] for _, g, _ in groups(cluster) for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1
    # Token auth, as cluster.yaml's RAY_AUTH_MODE=token; KubeRay requires Ray >= 2.52 for it.
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    assert "--env RAY_AUTH_MODE=token" in node_types["docker"]["run_options"]
    assert tuple(int(x) for x in cluster["spec"]["rayVersion"].split(".")) >= (2, 52, 0)
    # The head Service and pod names are built from the cluster's name.
    assert DNS_LABEL.match(cluster["metadata"]["name"]) and len(cluster["metadata"]["name"]) <= 53


def test_the_rayjob_runs_the_study_on_this_cluster_with_its_volumes(cluster):
    docs = documents("raycluster.yaml")
    job = one(documents("rayjob.yaml"), "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["mgd-ray", "study"]
    args = get_args_parser("mgd-ray study").parse_args(argv[2:])

    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}

    def mounts(group):
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] in accounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        found = {}
        for m in container["volumeMounts"]:
            volume = volumes[m["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{group.get('groupName', 'head')}: no PVC {claim}"
                found[m["mountPath"]] = claim
        return found

    def claim_of(path, found):
        return next((c for p, c in found.items() if Path(path).is_relative_to(p)), None)

    head = mounts(cluster["spec"]["headGroupSpec"])
    # The driver runs on the head: its records on the results volume, the data where every
    # worker reads it too (a ReadWriteMany claim), checkpoints on S3.
    assert claim_of(args.output_dir, head) == "mgd-results"
    data = claim_of(args.data_root, head)
    assert data == "mgd-data" and "ReadWriteMany" in claims[data]["spec"]["accessModes"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert claim_of(args.data_root, mounts(group)) == data
    assert args.storage_path.startswith("s3://")
    assert args.gpus_per_trial <= max(
        int(g["rayStartParams"]["num-gpus"]) for g in cluster["spec"]["workerGroupSpecs"]
    )
