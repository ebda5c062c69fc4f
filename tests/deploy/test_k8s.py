"""deploy/k8s: every overlay renders (`kubectl kustomize`) into objects valid against their
schemas, offline, and into the deployment docs/scale-out.md describes: GPU workers scaled from
zero by KEDA on droptune's own queue-depth query, the API after its migration, secrets by
reference. The workers as Jobs (the -jobs overlays): test_k8s_jobs.py."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from droptune.storage.jobs import depth
from tests.deploy import k8s
from tests.deploy.k8s import Obj, container, env_secret, one, render, secret_keys

needs_kubectl = pytest.mark.skipif(
    k8s.KUBECTL is None,
    reason="kubectl is not installed: the overlays cannot be rendered (kubectl kustomize)",
)
KINDS = {
    "Namespace": 1,
    "ConfigMap": 2,
    "Secret": 2,  # the app's, and KEDA's connection alone
    "Service": 1,
    "Deployment": 2,
    "PodDisruptionBudget": 2,
    "ScaledObject": 1,
    "TriggerAuthentication": 1,
}
# The workers as Jobs: a ScaledJob instead of their Deployment, ScaledObject and budget.
JOB_KINDS = KINDS | {"Deployment": 1, "PodDisruptionBudget": 1, "ScaledJob": 1}
del JOB_KINDS["ScaledObject"]


@needs_kubectl
@pytest.mark.parametrize("overlay", k8s.ALL_OVERLAYS)
def test_every_object_is_valid_against_its_schema(overlay: str) -> None:
    objs = render(overlay)
    kinds: dict[str, int] = {}
    for obj in objs:
        k8s.validate(obj)
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "droptune", obj["metadata"]
    assert kinds == (JOB_KINDS if overlay in k8s.JOB_OVERLAYS else KINDS)


def _set(obj: Obj, path: str, value: Any) -> Obj:
    """A copy of obj with the dotted path (list indices as numbers) set to value."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[int(last) if isinstance(node, list) else last] = value
    return out


BROKEN = [
    ("Deployment", "spec.replicas", "two"),
    ("Deployment", "spec.template.spec.containers.0.imagePullPolicyy", "Always"),
    ("Service", "spec.ports.0.port", "http"),
    ("PodDisruptionBudget", "spec.minAvailabel", 1),
    ("ScaledObject", "spec.minReplicaCount", "zero"),
    ("ScaledObject", "spec.triggerz", []),
    ("ScaledObject", "spec.triggers.0.type", None),
    ("ScaledObject", "spec.scaleTargetRef", {"kind": "Deployment"}),  # no name
    ("TriggerAuthentication", "spec.secretTargetRef.0.parameter", 5),
    ("ScaledJob", "spec.scalingStrategy.strategy", "fastest"),
    ("ScaledJob", "spec.rollout.strategy", "slow"),
    ("ScaledJob", "spec.jobTargetRef.backoffLimit", "none"),
    ("ScaledJob", "spec.jobTargetRef.template.spec.containers.0.imagee", "x"),
    ("ScaledJob", "spec.jobTargetRef.template.spec.terminationGracePeriodSeconds", "600"),
    ("ScaledJob", "spec.triggers.0.authenticationRef", {}),  # no name
]


@needs_kubectl
@pytest.mark.parametrize(("kind", "path", "value"), BROKEN)
def test_a_wrong_manifest_fails_validation(kind: str, path: str, value: Any) -> None:
    obj = k8s.find(render("gpu-jobs" if kind == "ScaledJob" else "gpu"), kind)[0]
    k8s.validate(obj)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        k8s.validate(_set(obj, path, value))


@needs_kubectl
def test_gpu_workers_request_one_gpu_and_cpu_workers_none() -> None:
    gpu = container(k8s.worker(render("gpu")), "worker")
    for part in ("requests", "limits"):
        assert str(gpu["resources"][part]["nvidia.com/gpu"]) == "1"
    assert "cuda" in gpu["command"]
    cpu_objs = render("cpu")
    assert "nvidia.com/gpu" not in yaml.safe_dump(cpu_objs)
    cpu = container(k8s.worker(cpu_objs), "worker")
    assert cpu["resources"]["requests"]["cpu"] == cpu["resources"]["limits"]["cpu"] == "4"
    assert cpu["command"][-4:] == ["--device", "cpu", "--threads", "4"]


@needs_kubectl
@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_keda_scales_the_worker_deployment_from_zero_on_the_queue_depth(overlay: str) -> None:
    objs = render(overlay)
    workers = k8s.worker(objs)
    assert "replicas" not in workers["spec"]  # KEDA's to set; an apply must not reset it
    scaled = one(objs, "ScaledObject")["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", workers["metadata"]["name"])
    assert scaled["minReplicaCount"] == 0
    assert 1 <= scaled["maxReplicaCount"] <= 20  # ~20 workers per PostgreSQL, at 4-5 each
    triggers = {t["name"]: t for t in scaled["triggers"]}
    assert {t["type"] for t in triggers.values()} == {"postgresql"}
    assert triggers["depth"]["metadata"]["query"] == depth.depth_sql()
    assert triggers["busy"]["metadata"]["query"] == depth.busy_sql()
    for t in triggers.values():
        assert t["metadata"]["activationTargetQueryValue"] == "0"  # any work wakes one
        auth = one(objs, "TriggerAuthentication", t["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "connection"
        assert ref["key"] in secret_keys(objs, ref["name"])


def test_the_scaled_object_carries_the_queries() -> None:
    """Without kubectl too: the base's ScaledObject has depth.py's texts."""
    docs = yaml.safe_load_all((k8s.K8S / "base" / "worker-scaledobject.yaml").read_text())
    (scaled,) = [d for d in docs if d and d["kind"] == "ScaledObject"]
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}
    assert queries == {"depth": depth.depth_sql(), "busy": depth.busy_sql()}


@needs_kubectl
def test_workers_use_the_worker_role_and_have_time_to_hand_back() -> None:
    objs = render("gpu")
    spec = k8s.worker(objs)["spec"]["template"]["spec"]
    w = container(k8s.worker(objs), "worker")
    assert env_secret(w, "DROPTUNE_DATABASE_URL") == ("droptune", "worker-database-url")
    assert "--exit-when-idle" not in w["command"]  # KEDA stops them, not the queue
    # SIGTERM: the epoch ends, the trials go back; compose gives 60 s, long epochs need more.
    assert spec["terminationGracePeriodSeconds"] >= 300


@needs_kubectl
def test_the_api_migrates_creates_the_role_and_the_token_before_serving() -> None:
    objs = render("gpu")
    api = one(objs, "Deployment", "droptune-api")
    pod = api["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    assert list(inits) == ["db-upgrade", "worker-role", "admin-token"]
    assert inits["db-upgrade"]["command"] == ["droptune", "db", "upgrade"]
    assert inits["worker-role"]["command"][-1].endswith("/worker-role.py")
    assert env_secret(inits["worker-role"], "DROPTUNE_WORKER_PASSWORD")[1] == "worker-password"
    assert "--token-from-env" in inits["admin-token"]["command"]
    assert env_secret(inits["admin-token"], "DROPTUNE_ADMIN_TOKEN")[1] == "admin-token"
    serve = container(api, "api")
    assert serve["command"][:2] == ["droptune", "serve"]
    assert env_secret(serve, "DROPTUNE_DATABASE_URL") == ("droptune", "database-url")
    assert serve["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "tcpSocket" in serve["livenessProbe"]  # a database outage must not restart it
    assert {"cpu", "memory"} <= set(serve["resources"]["requests"])
    service = one(objs, "Service", "droptune-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in serve["ports"]]
    for pdb, deployment in (("droptune-api", api), ("droptune-worker", k8s.worker(objs))):
        selector = one(objs, "PodDisruptionBudget", pdb)["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()


def _refs(node: Any) -> list[tuple[str, str, str | None]]:
    """Every (kind, name, key) a pod spec refers to: secret and config map keys and sources."""
    out: list[tuple[str, str, str | None]] = []
    if isinstance(node, dict):
        for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if field in node:
                out.append((kind, node[field]["name"], node[field]["key"]))
        for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if field in node:
                out.append((kind, node[field]["name"], None))
        if "configMap" in node and "name" in node["configMap"]:
            out.append(("ConfigMap", node["configMap"]["name"], None))
        for v in node.values():
            out += _refs(v)
    elif isinstance(node, list):
        for v in node:
            out += _refs(v)
    return out


@needs_kubectl
@pytest.mark.parametrize("overlay", k8s.ALL_OVERLAYS)
def test_every_secret_and_config_map_reference_resolves(overlay: str) -> None:
    objs = render(overlay)
    templates = [d["spec"]["template"] for d in k8s.find(objs, "Deployment")]
    templates += [j["spec"]["jobTargetRef"]["template"] for j in k8s.find(objs, "ScaledJob")]
    refs = _refs(templates)
    assert ("Secret", "droptune", "worker-database-url") in refs
    for kind, name, key in refs:
        obj = one(objs, kind, name)
        if key is not None:
            assert key in set(obj.get("data", {})) | set(obj.get("stringData", {}))
    config = one(objs, "ConfigMap", "droptune-config")["data"]
    assert float(config["DROPTUNE_WORKER_MEMORY_GB"]) > 0  # admission while scaled to zero


def test_the_shipped_secret_holds_placeholders_only() -> None:
    """Never a real secret in the repository; the placeholder admin token is too short for
    `token create --token-from-env` (32 characters), so an unedited deployment does not start."""

    def read(name: str) -> dict[str, str]:
        lines = (k8s.K8S / "base" / name).read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    values, keda = read("secrets.env"), read("keda.env")
    assert set(values) == {
        "database-url",
        "admin-token",
        "worker-password",
        "worker-database-url",
        "keda-password",
    }
    # KEDA's connection in a Secret of its own: its operator need not read the admin token's
    assert set(keda) == {"keda-connection"}
    for value in [*values.values(), *keda.values()]:
        assert "REPLACE-ME" in value
    assert len(values["admin-token"]) < 32
    assert not keda["keda-connection"].startswith("postgresql+")  # KEDA's driver is pgx
    assert keda["keda-connection"].startswith("postgresql://droptune_keda:")  # read-only role
