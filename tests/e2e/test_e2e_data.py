"""Bring your own data, end to end: files uploaded through a real API, trained by a real worker
process on SQLite and on PostgreSQL, answered by /best; and the README's commands as written."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from droptune.client import Client
from tests import datafiles, procs

pytestmark = pytest.mark.slow

TINY = {
    "model": {"hidden": [16]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 2, "dropout_low": 0.1, "dropout_high": 0.5},
}


def test_uploads_train_on_a_worker_and_answer(db_url: str, tmp_path: Path) -> None:
    with procs.service(db_url, tmp_path) as (base, _work), Client(base) as c:
        cancer = c.upload_dataset(datafiles.cancer_csv(tmp_path / "c.csv"), target="target")
        table = c.upload_dataset(datafiles.tabular_npz(tmp_path / "t.npz"))
        images = c.upload_dataset(datafiles.image_npz(tmp_path / "i.npz"))
        prices = c.upload_dataset(datafiles.regression_csv(tmp_path / "r.csv"))
        mixed = c.upload_dataset(datafiles.mixed_csv(tmp_path / "m.csv"))
        cnn = {"kind": "cnn", "channels": [4], "hidden": [16]}
        studies = {
            "cancer": c.submit({**TINY, "dataset": {"id": cancer.id}}),
            "npz": c.submit({**TINY, "dataset": {"id": table.id}}),
            "images": c.submit(
                {
                    **TINY,
                    "dataset": {"id": images.id},
                    "model": cnn,
                    "training": {"epochs": 4, "lr": 0.01},  # a small CNN learns slowly
                }
            ),
            "prices": c.submit(
                {**TINY, "dataset": {"id": prices.id}, "training": {"epochs": 10, "lr": 0.01}}
            ),
            "mixed": c.submit({**TINY, "dataset": {"id": mixed.id}}),
            "cancer again": c.submit({**TINY, "dataset": {"id": cancer.id}, "name": "2"}),
        }
        answers = {k: c.best(s.id, wait=300) for k, s in studies.items()}
        for name, best in answers.items():
            assert best.status == "succeeded", (name, best)
            assert best.dropout is not None and 0.1 <= best.dropout <= 0.5, (name, best)
            assert best.score is not None and len(best.score.folds) == 3, (name, best)
        assert answers["cancer"].metric == "accuracy" and answers["cancer"].score
        assert answers["cancer"].score.mean > 0.8  # 63% is the majority class
        assert answers["images"].score and answers["images"].score.mean > 0.3  # 10% is chance
        prices_best = answers["prices"]
        assert (prices_best.metric, prices_best.direction) == ("rmse", "minimize")
        # Scored on the target's own scale, and far better than predicting its mean.
        assert prices.target_std is not None and prices_best.score is not None
        assert prices_best.score.mean < 0.5 * prices.target_std
    # Two studies on one data set: its bytes came from the database once.
    log = (tmp_path / "droptune.worker.log").read_text()
    assert log.count(f"data set {cancer.id}: ") == 1, log[-3000:]
    assert "read from the database" in log


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return procs.cli(*args, "--url", url)


def test_the_readme_steps_and_a_huge_declared_upload(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    csv = datafiles.cancer_csv(tmp_path / "cancer.csv")
    fast = ["--epochs", "2", "--folds", "3", "--hidden", "16"]
    with procs.service(url, tmp_path) as (base, _work):
        port = int(base.rsplit(":", 1)[1])
        up = _cli("dataset", "upload", str(csv), "--target", "target", url=base)
        assert up.returncode == 0, up.stderr
        first = up.stdout.split()[0]
        assert first == "1" and "569 rows" in up.stdout and "30 columns" in up.stdout
        assert "2 classes" in up.stdout, up.stdout
        sub = _cli("submit", "--dataset-id", first, "--trials", "2", *fast, url=base)
        assert sub.returncode == 0 and sub.stdout.strip() == "1", sub.stderr
        waited = _cli("wait", "1", url=base)
        assert waited.returncode == 0 and "best dropout" in waited.stdout, waited.stderr
        # Upload (or reuse by content) and submit in one step.
        again = _cli(
            "submit", "--data", str(csv), "--target", "target", "--trials", "2", *fast, url=base
        )
        assert again.returncode == 0 and again.stdout.strip() == "2", again.stderr
        assert "data set 1 (uploaded before: reused):" in again.stderr  # the same bytes
        refused = _cli(
            "submit", "--data", str(csv), "--target", "target", "--metric", "rmse", url=base
        )
        assert refused.returncode == 1 and "cv.metric" in refused.stderr
        assert "use --dataset-id 1" in refused.stderr
        assert _cli("wait", "2", url=base).returncode == 0
        listed = _cli("dataset", "list", url=base)
        assert listed.stdout.startswith("1\tcancer.csv [csv] 569 rows")
        shown = _cli("dataset", "show", "1", url=base)
        assert "mean radius: numeric" in shown.stdout and "studies: 2, 1" in shown.stdout
        gone = _cli("dataset", "rm", "1", url=base)
        assert gone.returncode == 0, gone.stderr
        bad = _cli("dataset", "upload", str(tmp_path / "nope.csv"), url=base)
        assert bad.returncode == 1 and bad.stderr.startswith("error: cannot read")

        # A body declared far over the limit is refused before it is sent.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            answer = b""
            while chunk := s.recv(4096):  # the server closes after its answer
                answer += chunk
        answer_text = answer.decode()
        assert answer_text.startswith("HTTP/1.1 413"), answer_text
        assert "DROPTUNE_MAX_UPLOAD_MB" in answer_text
