"""deploy/k8s's -jobs overlays (components/worker-jobs): the workers as the Jobs of a KEDA
ScaledJob instead of a Deployment scaled by a ScaledObject. A Job's pod is the overlay's worker
pod (device, resources, secrets, grace) running `droptune worker --exit-when-idle`, started on
the same depth query and TriggerAuthentication; that command, run with the pod's environment,
works through the queue and exits 0 once it is empty. test_k8s.py validates every object."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from droptune.storage.jobs import depth
from tests.deploy import k8s
from tests.deploy.idle_exit import clean_env, runs_the_queue_and_exits_0
from tests.deploy.k8s import Obj, env_secret, find, one, render, secret_keys

needs_kubectl = pytest.mark.skipif(
    k8s.KUBECTL is None,
    reason="kubectl is not installed: the overlays cannot be rendered (kubectl kustomize)",
)
# (the overlay with a worker Deployment, the same overlay with worker Jobs)
PAIRS = list(zip(k8s.OVERLAYS, k8s.JOB_OVERLAYS, strict=True))
SCALED_JOB = k8s.K8S / "components" / "worker-jobs" / "scaledjob" / "worker-scaledjob.yaml"


def _container(objs: list[Obj]) -> Obj:
    (c,) = k8s.worker_template(objs)["spec"]["containers"]
    return dict(c)


@needs_kubectl
@pytest.mark.parametrize("overlay", k8s.JOB_OVERLAYS)
def test_the_job_variant_has_no_worker_deployment_and_runs_exit_when_idle(overlay: str) -> None:
    objs = render(overlay)
    assert [d["metadata"]["name"] for d in find(objs, "Deployment")] == ["droptune-api"]
    assert find(objs, "ScaledObject") == []
    # a budget over Job pods could not be computed (no scale): drains would stall on them
    assert [p["metadata"]["name"] for p in find(objs, "PodDisruptionBudget")] == ["droptune-api"]
    command = _container(objs)["command"]
    assert command[:2] == ["droptune", "worker"]
    assert command[-1] == "--exit-when-idle"
    assert k8s.worker_template(objs)["spec"]["restartPolicy"] == "Never"


@needs_kubectl
@pytest.mark.parametrize(("deployment", "jobs"), PAIRS)
def test_a_job_pod_is_the_worker_deployments_pod_with_the_flag(deployment: str, jobs: str) -> None:
    """The same image, device, resources, environment, secrets, volumes and grace period."""
    workers = k8s.worker(render(deployment))
    expected = copy.deepcopy(workers["spec"]["template"])
    expected["spec"]["containers"][0]["command"].append("--exit-when-idle")
    expected["spec"]["restartPolicy"] = "Never"
    objs = render(jobs)
    assert k8s.worker_template(objs) == expected
    scaled = one(objs, "ScaledJob")["metadata"]  # its labels go on to every Job
    assert (scaled["namespace"], scaled["labels"]) == ("droptune", workers["metadata"]["labels"])
    w = _container(objs)
    assert env_secret(w, "DROPTUNE_DATABASE_URL") == ("droptune", "worker-database-url")
    # SIGTERM (a drain, a deleted Job): the epoch ends and the trials go back, as before
    assert k8s.worker_template(objs)["spec"]["terminationGracePeriodSeconds"] >= 300


@needs_kubectl
def test_gpu_jobs_request_one_gpu_and_cpu_jobs_none() -> None:
    gpu = _container(render("gpu-jobs"))
    for part in ("requests", "limits"):
        assert str(gpu["resources"][part]["nvidia.com/gpu"]) == "1"
    assert gpu["command"] == ["droptune", "worker", "--device", "cuda", "--exit-when-idle"]
    cpu_objs = render("cpu-jobs")
    assert "nvidia.com/gpu" not in yaml.safe_dump(cpu_objs)
    cpu = _container(cpu_objs)
    assert cpu["resources"]["requests"]["cpu"] == cpu["resources"]["limits"]["cpu"] == "4"
    assert cpu["command"][2:] == ["--device", "cpu", "--threads", "4", "--exit-when-idle"]


@needs_kubectl
@pytest.mark.parametrize(("deployment", "jobs"), PAIRS)
def test_keda_starts_jobs_from_zero_on_the_depth_query(deployment: str, jobs: str) -> None:
    objs = render(jobs)
    spec = one(objs, "ScaledJob")["spec"]
    scaled_object = one(render(deployment), "ScaledObject")["spec"]
    # depth alone: "busy" keeps a Deployment's busy workers; Jobs are never scaled down
    (trigger,) = spec["triggers"]
    (same,) = [t for t in scaled_object["triggers"] if t["name"] == "depth"]
    assert trigger == same  # query, target, activation, authentication
    assert trigger["metadata"]["query"] == depth.depth_sql()
    assert trigger["metadata"]["activationTargetQueryValue"] == "0"  # any work starts one
    auth = one(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["key"] in secret_keys(objs, ref["name"])) == ("connection", True)
    assert spec.get("minReplicaCount", 0) == 0
    assert spec["maxReplicaCount"] == scaled_object["maxReplicaCount"]  # ~20 per PostgreSQL
    assert spec["pollingInterval"] == scaled_object["pollingInterval"]
    # min(ceil(depth / target), max) Jobs less those not finished: the ScaledObject's sizing
    assert spec["scalingStrategy"] == {"strategy": "default"}
    assert spec["rollout"]["strategy"] == "gradual"  # an apply must not delete running Jobs
    job = spec["jobTargetRef"]
    assert (job["parallelism"], job["completions"], job["backoffLimit"]) == (1, 1, 0)
    assert "activeDeadlineSeconds" not in job  # a Job runs while there is work
    for kept in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        assert 1 <= spec[kept] <= 20  # KEDA's default is 100 of each


def test_the_scaled_job_carries_the_depth_query() -> None:
    """Without kubectl too: the component's ScaledJob has depth.py's text."""
    (scaled,) = [d for d in yaml.safe_load_all(SCALED_JOB.read_text()) if d]
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}
    assert queries == {"depth": depth.depth_sql()}


@needs_kubectl
@pytest.mark.postgres
@pytest.mark.slow
def test_a_jobs_worker_runs_the_queue_and_exits_0_when_it_is_empty(
    pg_url: str, tmp_path: Path
) -> None:
    """cpu-jobs' container command with its environment (the config map's, then its own; the
    test database's URL for the secret's placeholder), as the Job's pod runs it."""
    objs = render("cpu-jobs")
    c = _container(objs)
    env = clean_env(tmp_path)
    for source in c.get("envFrom", []):
        env |= one(objs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for e in c["env"]:
        if "valueFrom" in e:
            assert env_secret(c, e["name"]) == ("droptune", "worker-database-url")
            env[e["name"]] = pg_url
        else:
            env[e["name"]] = e["value"]

    def launch() -> subprocess.CompletedProcess[str]:
        return subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=150)

    runs_the_queue_and_exits_0(pg_url, launch)
