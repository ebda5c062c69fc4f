"""The honest answer end to end, over a real server and worker: on a small data set with noisy
labels, where dropout clearly matters, the recommended rate beats no dropout on rows the search
never saw, and the downloaded model reproduces that score in a fresh Python with torch,
scikit-learn and skops only (the README's snippet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from droptune.client.api import Client
from tests.procs import service

pytestmark = pytest.mark.slow

HOLDOUT = 0.3

README = Path(__file__).resolve().parents[2] / "README.md"

# The README's snippet runs as a user runs it, then says which droptune modules it imported.
RUN_SNIPPET = """
import runpy, sys
sys.modules["droptune"] = None  # any import of droptune fails: the file must not need it
sys.argv = ["predict.py", *sys.argv[1:]]
runpy.run_path("predict.py", run_name="__main__")
print(sorted(m for m in sys.modules if m.split(".")[0] == "droptune" and sys.modules[m]))
"""


def readme_snippet() -> str:
    text = README.read_text()
    block = text.split("<!-- model-snippet -->")[1].split("<!-- /model-snippet -->")[0]
    return block.strip().removeprefix("```python").removesuffix("```")


def _noisy_digits(path: Path) -> Path:
    """700 digits, 40% of their labels replaced by random ones: a wide net memorises them. A
    column of noise categories and a few missing pixels make the preprocessing a scikit-learn
    transformer (imputers, one-hot, missing indicators) that travels inside the model file."""
    rng = np.random.default_rng(0)
    X, y = load_digits(return_X_y=True)
    idx = rng.permutation(len(y))[:700]
    X, y = X[idx], y[idx]
    flip = rng.random(len(y)) < 0.4
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    df = pd.DataFrame(X, columns=[f"p{i}" for i in range(64)])
    df.loc[rng.random(len(y)) < 0.05, "p20"] = np.nan
    df.insert(0, "pen", rng.choice(["blue", "black", "red"], len(y)))
    df = df.assign(label=y)
    df.to_csv(path, index=False)
    return path


def test_recommended_rate_beats_no_dropout_on_unseen_rows_and_the_model_reproduces_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    csv = _noisy_digits(tmp_path / "noisy.csv")
    with service(sqlite_url, tmp_path) as (api, _worker), Client(api) as c:
        ds = c.upload_dataset(csv, target="label", task="classification")
        spec = {
            "name": "noisy digits",
            "dataset": {"id": ds.id},
            "model": {"hidden": [256, 256]},
            "training": {"epochs": 20},
            "cv": {"folds": 3, "repeats": 2},
            "search": {"n_trials": 6, "sampler": "grid", "pruner": "none", "batch_trials": 6},
            "evaluation": {"holdout": HOLDOUT},
        }
        study = c.submit(spec)
        best = c.best(study.id, wait=600)
        assert best.status == "succeeded", c.get(study.id).reason
        assert c.get(study.id).progress.refit == "done"
        trials = c.trials(study.id)
        model = c.download_model(study.id, tmp_path / "model.pt2")
    assert all(len(t.score.folds) == 6 for t in trials if t.score)  # R x K splits each
    assert {t.p_vs_best is not None for t in trials if t.state == "COMPLETE"} == {True}
    test, rec = best.test, best.recommended
    assert test is not None and rec is not None and test.baseline is not None
    assert test.dropout == rec.dropout > 0 and test.n == 210 and test.source == "holdout"
    assert test.score > test.baseline.score, best.model_dump_json()
    lo, hi = test.ci95
    (tmp_path / "predict.py").write_text(readme_snippet())
    out = subprocess.run(
        [sys.executable, "-c", RUN_SNIPPET, str(model), str(csv), "label"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository
    )
    assert out.returncode == 0, out.stderr
    line, modules = out.stdout.strip().splitlines()
    assert modules == "[]"  # torch, scikit-learn and skops only
    assert line.startswith(f"accuracy on {test.n} held-out rows: ")
    accuracy = float(line.rsplit(" ", 1)[1])
    assert lo <= accuracy <= hi
    assert accuracy == pytest.approx(test.score, abs=5e-5)  # printed to four places


def test_a_test_data_set_is_scored_once_and_must_match_the_search_data(
    sqlite_url: str, tmp_path: Path
) -> None:
    X, y = load_digits(return_X_y=True)
    cols = [f"p{i}" for i in range(64)]
    frame = pd.DataFrame(X, columns=cols).assign(label=y)
    frame.iloc[:1200].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[1200:].to_csv(tmp_path / "test.csv", index=False)
    frame.iloc[1200:, 1:].to_csv(tmp_path / "other.csv", index=False)  # a column fewer
    with service(sqlite_url, tmp_path) as (api, _worker), Client(api) as c:
        train = c.upload_dataset(tmp_path / "train.csv", target="label")
        test = c.upload_dataset(tmp_path / "test.csv", target="label")
        other = c.upload_dataset(tmp_path / "other.csv", target="label")
        base = {
            "dataset": {"id": train.id},
            "model": {"hidden": [32]},
            "training": {"epochs": 2},
            "cv": {"folds": 3},
            "search": {"n_trials": 2, "pruner": "none"},
        }
        again = c.upload_dataset(tmp_path / "train.csv", target="label")  # deduplicated
        refusals = [
            ("evaluation.test_dataset", {"test_dataset": other.id}),  # a column fewer
            ("evaluation.test_dataset", {"test_dataset": again.id}),  # the searched file
            ("evaluation.holdout", {"test_dataset": test.id, "holdout": 0.2}),
        ]
        for field, evaluation in refusals:
            r = httpx.post(f"{api}/studies", json={**base, "evaluation": evaluation})
            assert r.status_code == 422, r.text
            assert field in {e["field"] for e in r.json()["errors"]}, r.text
        assert c.list().total == 0  # nothing stored
        study = c.submit({**base, "evaluation": {"test_dataset": test.id}})
        assert study.spec.evaluation.holdout in (None, 0.0)  # every training row searched
        r = httpx.delete(f"{api}/datasets/{test.id}")
        assert r.status_code == 409 and str(study.id) in r.json()["detail"]
        best = c.best(study.id, wait=300)
    assert best.status == "succeeded"
    assert best.test is not None and best.test.source == "test_dataset"
    assert best.test.n == len(frame) - 1200
    assert best.test.ci95[0] <= best.test.score <= best.test.ci95[1]


def test_a_small_table_without_held_out_rows_still_ends_with_a_model(tmp_path: Path) -> None:
    """Issue 22: under 500 rows nothing is held out by default, and `droptune model` answered
    404 on almost every small table. Now the refit runs on every row: the model is there, the
    answer says it has no test score and how to get one (the CLI flag)."""
    import torch
    from sklearn.datasets import load_iris

    spec = {
        "dataset": {"builtin": "iris"},
        "model": {"hidden": [32]},
        "training": {"epochs": 30},
        "cv": {"folds": 3},
        "search": {"n_trials": 4},
    }
    out_file = tmp_path / "iris.pt2"
    model_cmd = [sys.executable, "-m", "droptune.client.cli", "model"]
    with service(f"sqlite:///{tmp_path / 'droptune.db'}", tmp_path) as (api, _), Client(api) as c:
        study = c.submit(spec)
        assert study.spec.evaluation.holdout == 0.0  # 150 rows: none held out
        best = c.best(study.id, wait=300)
        assert best.status == "succeeded" and best.test is None
        assert any("--holdout 0.2" in w and "no test score" in w for w in best.warnings)
        argv = [*model_cmd, str(study.id), "--url", api, "-o", str(out_file)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    program = torch.export.load(str(out_file))
    X, y = load_iris(return_X_y=True)
    logits = program.module()(torch.tensor(X, dtype=torch.float32))
    assert logits.shape == (150, 3)
    assert float((logits.argmax(1).numpy() == y).mean()) > 0.8  # it learned: trained on every row
