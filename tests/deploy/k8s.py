"""Helpers for the Kubernetes tests: render an overlay with `kubectl kustomize`, validate its
objects offline (kubernetes-validate's schemas for Kubernetes' own kinds, KEDA's CRD schemas
vendored in deploy/k8s/schemas for KEDA's), find objects and containers."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The workers as a Deployment scaled by a ScaledObject; as Jobs of a ScaledJob (the -jobs
# overlays: components/worker-jobs on top of the first two).
OVERLAYS = ["gpu", "cpu"]
JOB_OVERLAYS = ["gpu-jobs", "cpu-jobs"]
ALL_OVERLAYS = OVERLAYS + JOB_OVERLAYS
# A version kubernetes-validate ships schemas for (1.25 to 1.37 in its 1.37.0) and that
# kubectl here (1.32) matches.
KUBERNETES_VERSION = "1.32.0"
KUBECTL = shutil.which("kubectl")
KEDA_SCHEMAS = {
    "ScaledObject": K8S / "schemas" / "keda-scaledobject.json",
    "ScaledJob": K8S / "schemas" / "keda-scaledjob.json",
    "TriggerAuthentication": K8S / "schemas" / "keda-triggerauthentication.json",
}

Obj = dict[str, Any]


@functools.cache
def _rendered(overlay: str) -> str:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(overlay: str) -> list[Obj]:
    """The overlay's objects, as `kubectl apply -k` would send them (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(_rendered(overlay)) if d]


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with kubectl's default strict field
    validation: an unknown field is an error (CRD schemas leave additionalProperties open and
    let the server prune; a typo must fail here instead)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    open_ = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


@functools.cache
def keda_schema(kind: str) -> Obj:
    schema = json.loads(KEDA_SCHEMAS[kind].read_text())
    out: Obj = strict(schema)
    return out


def job_of(scaled_job: Obj) -> Obj:
    """The Job KEDA creates from a ScaledJob: its jobTargetRef is the Job's spec; the Job's
    name is generated from the ScaledJob's, and it carries its namespace and labels."""
    meta = scaled_job["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": meta["name"] + "-",
            "namespace": meta["namespace"],
            "labels": meta.get("labels", {}),
        },
        "spec": scaled_job["spec"]["jobTargetRef"],
    }


def validate(obj: Obj) -> None:
    """Raise when the object does not match its schema (jsonschema's or kubernetes-validate's
    ValidationError). A ScaledJob's Job is checked against Kubernetes' own Job schema too."""
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(obj, keda_schema(obj["kind"]))
        if obj["kind"] == "ScaledJob":
            kubernetes_validate.validate(job_of(obj), KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[o['kind'] for o in objs]}"
    return found[0]


def container(deployment: Obj, name: str) -> Obj:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(c)


def env_secret(c: Obj, var: str) -> tuple[str, str]:
    """(secret, key) that the container's environment variable `var` comes from."""
    (e,) = [e for e in c.get("env", []) if e["name"] == var]
    ref = e["valueFrom"]["secretKeyRef"]
    return str(ref["name"]), str(ref["key"])


def secret_keys(objs: list[Obj], name: str) -> set[str]:
    s = one(objs, "Secret", name)
    return set(s.get("data", {})) | set(s.get("stringData", {}))


def worker(objs: list[Obj]) -> Obj:
    """The Deployment whose container runs `droptune worker`."""
    (d,) = [
        d
        for d in find(objs, "Deployment")
        if d["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["droptune", "worker"]
    ]
    return d


def worker_template(objs: list[Obj]) -> Obj:
    """The workers' pod template: the worker Deployment's, or the ScaledJob's Job's."""
    jobs = find(objs, "ScaledJob")
    if jobs:
        (scaled,) = jobs
        return dict(scaled["spec"]["jobTargetRef"]["template"])
    return dict(worker(objs)["spec"]["template"])
