"""The CLI against a real API with no worker: flags that shape a spec, listing, and answers that
are not there yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from droptune.core import schemas
from droptune.core.answer.text import answer_lines
from droptune.storage.sql.migrate import upgrade
from tests import procs
from tests.unit.test_answer import spec, stored_study

pytestmark = pytest.mark.slow


def test_flags_list_and_a_missing_answer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    port = procs.free_port()
    api = procs.serve(url, port, tmp_path / "serve.log")
    base = ["--url", f"http://127.0.0.1:{port}"]
    try:
        empty = procs.cli("list", *base)
        assert empty.returncode == 0 and empty.stdout.startswith("no studies yet"), empty
        sub = procs.cli(
            "submit",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--dropout-range",
            "0.1,0.9",
            "--lr",
            "0.01",
            "--batch-size",
            "32",
            "--strategy",
            "optuna",
            "--json",
            *base,
        )
        assert sub.returncode == 0, sub.stderr
        spec = json.loads(sub.stdout)["spec"]
        assert spec["model"]["kind"] == "cnn"
        assert [spec["search"][k] for k in ("strategy", "sampler", "pruner")] == [
            "optuna",
            "tpe",
            "median",
        ]
        assert (spec["search"]["dropout_low"], spec["search"]["dropout_high"]) == (0.1, 0.9)
        assert (spec["training"]["lr"], spec["training"]["batch_size"]) == (0.01, 32)
        listed = procs.cli("list", *base)
        assert "study 1 [queued]" in listed.stdout and "on digits" in listed.stdout
        assert procs.cli("list", "--status", "running", *base).stdout.strip() == (
            "no running studies"
        )
        # No worker runs: no answer yet, and a script must be able to tell.
        best = procs.cli("best", "1", *base)
        assert best.returncode == 2 and "no finished trial yet" in best.stdout
        bad = procs.cli("submit", "--dataset", "iris", "--dropout-range", "0.5", *base)
        assert bad.returncode == 1 and "--dropout-range must be LOW,HIGH" in bad.stderr
    finally:
        procs.stop(api)
    gone = procs.cli("status", "1", *base)
    assert gone.returncode == 1 and "start it with `droptune up`" in gone.stderr


def test_best_wait_and_list_print_the_labelled_answer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    upgrade(url)
    sid = stored_study(url, spec(search={"dropout_low": 0.3, "dropout_high": 0.8}), "succeeded")
    port = procs.free_port()
    api = procs.serve(url, port, tmp_path / "serve.log")
    base = ["--url", f"http://127.0.0.1:{port}"]
    answer = [
        "best dropout 0.3000 (trial 0): accuracy 0.9740 ± 0.0019 (SE, 5 splits)",
        "recommended 0.4500 (one_se): the strongest dropout whose mean accuracy 0.9730 is "
        "within one standard error (0.0019) of the best, 0.9740 at 0.3, and not worse by the "
        "paired test",
        "2 trials tied with the best (95% family-wise): 0.3, 0.45",
        "warning: the best rate 0.30 sits at search.dropout_low 0.3: widen the range "
        "(lower search.dropout_low)",
    ]
    try:
        best = procs.cli("best", str(sid), *base)
        assert best.returncode == 0, best.stderr
        assert best.stdout.splitlines() == answer
        waited = procs.cli("wait", str(sid), *base)
        assert waited.returncode == 0, waited.stderr
        head = f"study {sid} [succeeded] 6/20 finished (complete 5, pruned 1, failed 1, running 0)"
        lines = waited.stdout.splitlines()  # after the progress bar's last frame
        assert lines[lines.index(head) + 1 :] == [f"  {line}" for line in answer]
        listed = procs.cli("list", *base)
        assert "; best 0.3000 (accuracy 0.9740), recommended 0.4500 (one_se)" in listed.stdout
    finally:
        procs.stop(api)


def test_the_test_score_lines() -> None:
    b = schemas.BestOut(
        study_id=1,
        dropout=0.3,
        params={"dropout": 0.3},
        score=schemas.Score(mean=0.97, std=0.01, folds=[0.96, 0.97, 0.98, 0.97]),
        metric="accuracy",
        direction="maximize",
        trial=2,
        one_se_dropout=0.45,
        one_se_trial=3,
        complete=False,
        status="running",
        test=schemas.TestScore(
            dropout=0.45,
            score=0.9621,
            ci95=[0.9403, 0.9788],
            n=360,
            source="holdout",
            metric="accuracy",
            baseline=schemas.TestPoint(dropout=0.0, score=0.951, ci95=[0.927, 0.9702]),
        ),
    )
    assert answer_lines(b) == [
        "best dropout 0.3000 (trial 2): accuracy 0.9700 ± 0.0050 (SE, 4 splits) (so far)",
        "test accuracy 0.962 [0.94, 0.98] on 360 held-out rows at dropout 0.45",
        "without dropout: accuracy 0.951 [0.93, 0.97]",
    ]
