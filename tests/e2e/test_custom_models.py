"""Custom models through the real API and real worker processes: registered by DROPTUNE_MODELS
and by an installed package's entry points, claimed only by workers that have them, refused at
submit when no worker has them, and a broken factory failing its trials, not its worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from droptune.client import Client
from tests import procs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_model"
MODELS = (
    "res_mlp=droptune_example_models:res_mlp,"
    "broken=tests.custom_factories:broken,"
    "bn_mlp=tests.custom_factories:bn_mlp"
)


def spec(name: str, **model: object) -> dict[str, object]:
    return {
        "name": f"custom {name}",
        "dataset": {"builtin": "iris"},
        "model": {"kind": "custom", "name": name, **model},
        "training": {"epochs": 20, "lr": 0.01, "batch_size": 16},
        "cv": {"folds": 3},
        "evaluation": {"holdout": 0},
        "search": {"n_trials": 4, "max_retries": 0, "max_failed": 0},
    }


def with_path(*paths: Path) -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([*(str(p) for p in paths), *([old] if old else [])])}


def test_registered_models_run_only_on_workers_that_have_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log")
    plain = procs.worker(sqlite_url, tmp_path / "plain.log")  # no custom models
    base = f"http://127.0.0.1:{port}"
    custom = None
    try:
        with Client(base) as c:
            # No worker has advertised it yet: refused, naming the field.
            r = httpx.post(f"{base}/studies", json=spec("res_mlp"))
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model.name", r.text
            extra = {**with_path(EXAMPLE, ROOT), "DROPTUNE_MODELS": MODELS}
            custom = procs.worker(sqlite_url, tmp_path / "custom.log", extra)
            procs.wait_until(lambda: len(c.models()) == 3, 60, "the custom worker's models")
            models = {m.name: m for m in c.models()}
            assert set(models) == {"res_mlp", "broken", "bn_mlp"}
            (custom_id,) = models["res_mlp"].workers
            assert httpx.post(f"{base}/studies", json=spec("nope")).status_code == 422

            good = c.submit(spec("res_mlp", options={"width": 16}))
            best = c.best(good.id, wait=180)
            assert best.status == "succeeded", (tmp_path / "custom.log").read_text()[-3000:]
            trials = c.trials(good.id)
            assert len(trials) == 4 and {t.worker for t in trials} == {custom_id}
            rates = [t.params["dropout"] for t in trials]
            assert len(set(rates)) == 4 and all(0 <= r <= 0.9 for r in rates)
            assert all(t.score and len(t.score.folds) == 3 for t in trials)
            assert best.score is not None and best.score.mean > 0.6  # iris: 3 classes, chance 0.33
            assert best.engine == "stacked (torch.vmap)"  # issue 22: said per study

            fallback = c.submit({**spec("bn_mlp"), "search": {"n_trials": 2}})
            fell = c.best(fallback.id, wait=180)
            assert fell.status == "succeeded"
            warned = c.trials(fallback.id)
            assert all(t.warning and "members trained one by one" in t.warning for t in warned)
            # the study says it, with the whole reason, where a user looks: /best and the CLI
            assert fell.engine == f"member by member ({warned[0].warning})", fell.engine
            shown = procs.cli("best", str(fallback.id), "--url", base)
            assert f"engine: member by member ({warned[0].warning})" in shown.stdout, shown
            log = (tmp_path / "custom.log").read_text()
            assert f"trained member by member ({warned[0].warning})" in log

            failing = c.submit(spec("broken"))
            assert c.best(failing.id, wait=180).status == "failed"
            # Every trial would fail the same way: the study ends at the first batch.
            assert "broken on purpose" in (c.get(failing.id).reason or "")
            failed = [t for t in c.trials(failing.id) if t.state == "FAIL"]
            assert failed and all("broken on purpose" in (t.reason or "") for t in failed)
            assert custom.poll() is None and plain.poll() is None  # both workers still run
            ran = {t.worker for s in (good, fallback, failing) for t in c.trials(s.id)}
            assert next(w.id for w in c.workers() if w.pid == plain.pid) not in ran
    finally:
        for proc in (custom, plain):
            if proc is not None:
                assert procs.stop(proc) == 0
        procs.stop(api)


def test_a_custom_spec_takes_its_sizes_in_options() -> None:
    from pydantic import ValidationError

    from droptune.core.spec.study import StudySpec

    ok = StudySpec(**spec("res_mlp", options={"width": 8}))
    assert "hidden" not in ok.model_dump(mode="json")["model"]
    for bad, field in (
        ({"hidden": [8]}, "hidden"),
        ({"dropout_layers": 2}, "dropout_layers"),  # without search.per_layer
        ({"options": {"width": {"nested": 1}}}, "options.width"),
    ):
        with pytest.raises(ValidationError, match=field):
            StudySpec(**spec("res_mlp", **bad))
    per_layer = {**spec("res_mlp"), "search": {"per_layer": True}}
    with pytest.raises(ValidationError, match="dropout_layers"):
        StudySpec(**per_layer)
    names = StudySpec(**{**per_layer, "model": {**per_layer["model"], "dropout_layers": 2}})  # type: ignore[dict-item]
    assert names.param_names() == ["dropout_0", "dropout_1"]


def test_an_installed_package_registers_its_models(sqlite_url: str, tmp_path: Path) -> None:
    """The example package, installed (its entry points `droptune.models`), as a team would."""
    target, source = tmp_path / "site", tmp_path / "custom_model"
    # From a copy: building in place would leave an .egg-info in examples/ whose entry points
    # any worker with that folder on PYTHONPATH would find.
    shutil.copytree(EXAMPLE, source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    port = procs.free_port()
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log")
    work = procs.worker(sqlite_url, tmp_path / "worker.log", with_path(target))
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            procs.wait_until(lambda: len(c.models()) >= 2, 60, "the installed models")
            assert {"resnet_tiny", "res_mlp"} <= {m.name for m in c.models()}
            image = {
                **spec("resnet_tiny", options={"width": 8, "blocks": 1}),
                "dataset": {"builtin": "digits"},
                "search": {"n_trials": 2, "max_retries": 0, "max_failed": 0},
                "training": {"epochs": 6, "lr": 0.01, "batch_size": 32},
            }
            study = c.submit(image)
            best = c.best(study.id, wait=240)
            assert best.status == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]
            assert best.score is not None and best.score.mean > 0.5  # digits: chance is 0.1
    finally:
        assert procs.stop(work) == 0
        procs.stop(api)
