"""The CLI against a real API with no worker: flags that shape a spec, listing, and answers that
are not there yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import procs

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
            "--json",
            *base,
        )
        assert sub.returncode == 0, sub.stderr
        spec = json.loads(sub.stdout)["spec"]
        assert spec["model"]["kind"] == "cnn"
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
