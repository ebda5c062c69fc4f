"""End to end on the embedded default: a real uvicorn server and a real worker on a SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from droptune.client import Client, launch
from droptune.client.launch import base_url
from tests import procs

pytestmark = pytest.mark.slow

SMALL = {
    "name": "e2e",
    "dataset": {"builtin": "digits"},
    "model": {"hidden": [32]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 6, "dropout_low": 0.05, "dropout_high": 0.6},
}


def test_submit_wait_best_dashboard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    port = procs.free_port()
    api = procs.serve(url, port, tmp_path / "serve.log")
    work = procs.worker(url, tmp_path / "droptune.worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with Client(base) as c:
            study = c.submit(SMALL)
            assert study.status == "queued"
            best = c.best(study.id, wait=180)
            assert best.complete and best.status == "succeeded", best
            assert best.dropout is not None and 0.05 <= best.dropout <= 0.6
            assert best.score is not None and len(best.score.folds) == 3
            assert best.score.mean > 0.3  # digits has 10 classes: far above chance
            assert best.engine == "stacked"
            assert best.one_se_dropout is not None and best.one_se_dropout >= best.dropout
            trials = c.trials(study.id)
            assert len(trials) == 6
            assert all(t.state in ("COMPLETE", "PRUNED") for t in trials)
            assert all(t.score and len(t.score.folds) == 3 for t in trials)
            assert all(t.device == "cpu" and t.train_seconds for t in trials)
            final = c.get(study.id)
            assert final.progress.complete + final.progress.pruned == 6
            workers = c.workers()
            assert [w.status for w in workers] == ["live"] and workers[0].pid == work.pid

        # Optuna itself, not droptune's code, sees the same trials in the same database.
        loaded = optuna.load_study(study_name=study.optuna_study, storage=url)
        finished = [t for t in loaded.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 6 and all("dropout" in t.params for t in finished)

        # The CLI, as a script would use it.
        cli = [sys.executable, "-m", "droptune.client.cli.main"]
        out = subprocess.run(
            [*cli, "best", str(study.id), "--json", "--url", base],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout)["dropout"] == best.dropout
        waited = subprocess.run(
            [*cli, "wait", str(study.id), "--url", base], capture_output=True, text=True
        )
        assert waited.returncode == 0 and "best dropout" in waited.stdout
        missing = subprocess.run(
            [*cli, "status", "999", "--url", base], capture_output=True, text=True
        )
        assert missing.returncode == 1
        assert missing.stderr.strip() == "error: 404: study 999 not found"

        # The dashboard reads the same storage, on the same port, read-only.
        gz = {"Accept-Encoding": "gzip"}
        assert httpx.get(f"{base}/dashboard", headers=gz).status_code == 200
        studies = httpx.get(f"{base}/api/studies", headers=gz).json()["study_summaries"]
        # named with its status and answer (the study list shows names only)
        shown = f"{study.optuna_study} \u00b7 succeeded \u00b7 recommended"
        assert [s["study_name"].startswith(shown) for s in studies] == [True], studies
        # Its parameter ranking (PED-ANOVA) works in a process that never loaded scikit-learn
        # (and optuna-dashboard finds the study by the name the view gave it).
        sid = studies[0]["study_id"]
        ranked = httpx.get(f"{base}/api/studies/{sid}/param_importances", headers=gz)
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["param_importances"][0][0]["name"] == "dropout", ranked.text
        assert httpx.delete(f"{base}/api/studies/1", headers=gz).status_code == 403
        assert len(optuna.load_study(study_name=study.optuna_study, storage=url).trials) == 6
        # A worker that stopped cleanly leaves the list, and shows with --all.
        assert procs.stop(work, signal.SIGTERM) == 0
        listed = subprocess.run(
            [*cli, "workers", "--json", "--url", base], capture_output=True, text=True, check=True
        )
        assert json.loads(listed.stdout) == []
        listed = subprocess.run(
            [*cli, "workers", "--all", "--json", "--url", base],
            capture_output=True,
            text=True,
            check=True,
        )
        assert [(w["pid"], w["status"]) for w in json.loads(listed.stdout)] == [
            (work.pid, "stopped")
        ]
    finally:
        rc = procs.stop(work, signal.SIGTERM)
        procs.stop(api)
    assert rc == 0


def test_bad_cli_input_is_one_line(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "droptune.client.cli.main"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": {"builtin": "digits"}, "cv": {"folds": 1}}))
    r = subprocess.run(
        [*cli, "submit", str(bad), "--url", "http://127.0.0.1:9"], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: invalid spec: cv.folds")
    r = subprocess.run(
        [*cli, "status", "1", "--url", "http://127.0.0.1:9"], capture_output=True, text=True
    )
    assert r.returncode == 1 and r.stderr.startswith("error: cannot reach droptune")
    assert len(r.stderr.strip().splitlines()) == 1
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\ndataset: {builtin: iris}\n".encode("latin-1"))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("dataset: {builtin: iris}\ntraining: 5\n")
    nowhere = "http://127.0.0.1:9"
    for args, words in [
        (["submit", str(latin1), "--url", nowhere], "cannot read"),
        (["submit", str(scalar), "--epochs", "3"], "`training` in the spec file must be"),
        (["wait", "1", "--url", nowhere], "cannot reach droptune"),
        (["best", "1", "--url", nowhere], "cannot reach droptune"),
        (["status", "1", "--url", "http://host:abc"], "not a URL: 'http://host:abc'"),
        (["cancel", "1", "--url", "localhost:8000"], "not an http(s) URL"),
        (
            ["worker", "--device", "gpu0", "--database-url", f"sqlite:///{tmp_path}/w.db"],
            "device 'gpu0' is not a device",
        ),
        (["serve", "--database-url", "mysql://x/y"], "supports sqlite:// and postgresql://"),
        (
            ["db", "upgrade", "--database-url", "postgresql://postgres@127.0.0.1:1/x"],
            "could not migrate the database",
        ),
        (
            ["worker", "--device", "cuda:99", "--database-url", f"sqlite:///{tmp_path}/w.db"],
            "device 'cuda:99' asked for, but",
        ),
    ]:
        r = subprocess.run([*cli, *args], capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1]  # after the migration's log lines
        assert r.returncode == 1 and last.startswith("error: ") and words in last, r.stderr
    assert not (tmp_path / "w.db").exists()  # a refused worker wrote nothing
    r = subprocess.run(
        [*cli, "db", "upgrade"],
        capture_output=True,
        text=True,
        env={**os.environ, "DROPTUNE_LEASE_GRACE_SECONDS": "abc"},
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: DROPTUNE_LEASE_GRACE_SECONDS='abc': "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_cancel_stops_running_trials_at_the_next_epoch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    long = {**SMALL, "training": {"epochs": 1000}, "search": {"n_trials": 4, "batch_trials": 2}}
    with procs.service(url, tmp_path) as (base, _work), Client(base) as c:
        study = c.submit(long)
        procs.wait_until(lambda: c.get(study.id).progress.running == 2, 60, "two trials")
        events = c.events(study.id)
        assert next(events).kind == "progress"
        t0 = time.monotonic()
        assert c.cancel(study.id).status == "cancelled"
        rest = list(events)  # the stream ends by itself once the study has ended
        assert (rest[-1].kind, rest[-1].data) == ("end", {"status": "cancelled"})
        procs.wait_until(lambda: c.get(study.id).progress.running == 0, 30, "trials to stop")
        assert time.monotonic() - t0 < 15
        trials = c.trials(study.id)
        # the two running trials failed with the reason; no trial started after the cancel
        assert [(t.state, t.reason) for t in trials] == [("FAIL", "cancelled")] * 2
        assert trials[0].epochs is None
        ended = c.get(study.id)
        assert ended.status == "cancelled"
        # stopped by the cancel, not failures of their own
        assert (ended.progress.failed, ended.progress.interrupted) == (0, 2)
        # the worker says it is idle once its batch has ended (right after the trials)
        procs.wait_until(lambda: [w.trials for w in c.workers()] == [[]], 10, "an idle worker")


def _assert_port_refused(url: str, host: str, port: int) -> None:
    """`up` on a port already in use is refused at once, in one line."""
    r = subprocess.run(
        [sys.executable, "-m", "droptune.client.cli", "up", "--host", host, "--port", str(port)],
        capture_output=True,
        text=True,
        env=procs._env(url, None),
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: cannot listen on {host}:{port}: Address already in use"
    ]


def test_up_starts_api_and_worker_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    port = procs.free_port()
    log = tmp_path / "up.log"
    # the port from DROPTUNE_PORT, as `DROPTUNE_PORT=8080 make run` gives it (the IPv6 test
    # below gives --port)
    up = procs.droptune(["up", "--workers", "1"], url, log, {"DROPTUNE_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        # The banner comes only once the API answers.
        procs.wait_until(lambda: "droptune is up" in log.read_text(), 90, f"the banner ({log})")
        with Client(base) as c:
            assert c.health()["status"] == "ok"
            study = c.submit({**SMALL, "search": {"n_trials": 2}})
            best = c.best(study.id, wait=120)
            assert best.complete and best.status == "succeeded"
            assert [w.device for w in c.workers()] == ["cpu"]
            _assert_port_refused(url, "127.0.0.1", port)
        # A second `up` on the same database says at once that it joins a live worker.
        log2 = tmp_path / "up2.log"
        port2 = str(procs.free_port())
        second = procs.droptune(["up", "--workers", "0", "--port", port2], url, log2)
        try:
            procs.wait_until(lambda: "droptune is up" in log2.read_text(), 90, f"2nd ({log2})")
        finally:
            assert procs.stop(second, signal.SIGINT, timeout=60) == 0, log2.read_text()[-2000:]
        text2 = log2.read_text()
        assert "note: 1 worker is already live on this database" in text2, text2[-2000:]
        banner = text2[text2.index(launch.RULE) :]
        assert "also       1 worker is already live" in banner
        assert banner.count(launch.RULE) == 2, banner  # the banner is framed
    finally:
        code = procs.stop(up, signal.SIGINT, timeout=90)
    assert code == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "droptune stopped." in text and "Traceback" not in text
    assert "already live" not in text  # the first `up` joined nobody


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_up_on_the_ipv6_wildcard_checks_and_reaches_its_port(tmp_path: Path) -> None:
    assert base_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert base_url("fe80::1", 80) == "http://[fe80::1]:80"
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback on this machine")
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    port = procs.free_port()
    log = tmp_path / "up.log"
    # A wildcard is a public address: refused without a token, served open with --insecure.
    argv = ["up", "--host", "::", "--port", str(port), "--workers", "0"]
    refused = procs.cli(*argv, env=procs._env(url, None), timeout=120)
    assert refused.returncode == 1 and "droptune token create" in refused.stderr
    up = procs.droptune([*argv, "--insecure"], url, log)
    try:
        procs.wait_until(lambda: "droptune is up" in log.read_text(), 90, f"the banner ({log})")
        assert f"API        http://[::1]:{port}" in log.read_text()
        with Client(f"http://[::1]:{port}") as c:
            assert c.health()["status"] == "ok"
        _assert_port_refused(url, "::", port)
    finally:
        assert procs.stop(up, signal.SIGINT, timeout=60) == 0, log.read_text()[-2000:]
