"""Time to the answer: a droptune study through the real service against the script a user writes.

    .venv/bin/python bench/bench_study.py [--rounds 3] [--threads N] [--out bench/results/study.md]

droptune: `droptune serve` and one `droptune worker` as subprocesses on a fresh SQLite file per
round, the default digits study submitted over HTTP and followed on its event stream (what
`droptune wait` does; `--search '{"strategy": "optuna"}'` runs the search before issue 21). plain:
a child process running `optuna.create_study` with the optuna strategy's TPE start-up count and
median pruner over bench_engine.py's per-fold nn.Module loop, 20 trials, on
the same 80% of digits and the same folds, reporting the mean fold accuracy every epoch. Both
use the same torch threads (default: torch's). The two alternate round by round (the machine is
shared); every ratio is of medians. Both sides are seeded, so every round gives the same answers
and only the times vary. About 4 minutes on a quiet 2-core machine, several times that under load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import matmul_peak
from plain_optuna import HOLDOUT, SPEC
from proc_cpu import cpu_s

from droptune.client.api import Client, ClientError
from droptune.core.schemas import StudyOut, TrialOut
from tests import procs

TUNED: dict[str, Any] = dict(SPEC)  # what droptune's side submits: SPEC and --search's fields
TIMEOUT_S = 900
PLAIN = Path(__file__).with_name("plain_optuna.py")


# --- (b) the plain script (bench/plain_optuna.py), run in a child process --------------------


def plain_round(threads: int) -> dict[str, Any]:
    """The plain script as `python script.py`: its wall time includes starting Python."""
    t0, c0 = time.perf_counter(), _children_cpu()
    out = subprocess.run(
        [sys.executable, str(PLAIN), "--threads", str(threads)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["cold_s"], res["cpu_cold_s"] = time.perf_counter() - t0, _children_cpu() - c0
    res["answer_s"], res["cpu_s"] = res["optimize_s"], res["optimize_cpu_s"]
    res["startup_s"] = res["cold_s"] - res["answer_s"]  # Python, imports, data, the study
    return res


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --- (a) droptune through the service --------------------------------------------------------


def _launch(args: list[str], url: str, tmp: Path, threads: int) -> subprocess.Popen[bytes]:
    """`droptune ARGS` with production settings, but for the database, threads and cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    env |= {
        "DROPTUNE_DATABASE_URL": url,
        "DROPTUNE_THREADS": str(threads),
        "DROPTUNE_CACHE_DIR": str(tmp / "cache"),
    }
    cmd = [sys.executable, "-m", "droptune.client.cli", *args]
    with (tmp / f"{args[0]}.log").open("ab") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _follow(
    c: Client, study_id: int, n_trials: int, t_submit: float, cpu: Callable[[], float]
) -> dict[str, float]:
    """Seconds from submit until every trial was told and until the study ended, as its event
    stream shows them (the API checks SQLite every 0.25 s), and the CPU seconds at the first."""
    out: dict[str, float] = {}
    for ev in c.events(study_id, idle_timeout=TIMEOUT_S):
        now = time.perf_counter() - t_submit
        p = ev.data.get("progress") or {}
        # n_trials as the row has it now: a settled search lowers it (search.stop_when_settled)
        target = min(n_trials, p.get("n_trials", n_trials))
        if "search_s" not in out and p.get("complete", 0) + p.get("pruned", 0) >= target:
            out |= {"search_s": now, "cpu_answer": cpu()}
        if ev.kind == "end":
            return {"search_s": now, "cpu_answer": cpu()} | out | {"end_s": now}
    raise RuntimeError(f"study {study_id}'s event stream closed before its end")


def _secs(a: dt.datetime | None, b: dt.datetime | None) -> float:
    assert a is not None and b is not None
    return (b - a).total_seconds()


def droptune_round(threads: int) -> dict[str, Any]:
    """Start serve + worker on a fresh SQLite file, submit, follow to the end, stop both."""
    with tempfile.TemporaryDirectory(prefix="bench-study-") as d:
        tmp = Path(d)
        url, port = f"sqlite:///{tmp / 'droptune.db'}", procs.free_port()
        t0 = time.perf_counter()
        api = _launch(["serve", "--port", str(port)], url, tmp, threads)
        work = _launch(["worker", "--device", "cpu"], url, tmp, threads)
        try:
            with Client(f"http://127.0.0.1:{port}") as c:
                procs.wait_until(lambda: _up(c), 120, f"the service (logs in {tmp})")
                t: dict[str, float] = {"ready_s": time.perf_counter() - t0}
                t["cpu_ready"] = cpu_s([api.pid, work.pid])
                study = c.submit(TUNED)
                t_submit = time.perf_counter()
                n = study.spec.search.n_trials
                t |= _follow(c, study.id, n, t_submit, lambda: cpu_s([api.pid, work.pid]))
                t["cold_s"] = t_submit - t0 + t["search_s"]  # launch until the search's answer
                out = c.get(study.id)
                trials = c.trials(study.id)
        finally:
            procs.stop(work)
            procs.stop(api)
        t["answer_s"], t["cpu_cold_s"] = t["search_s"], t["cpu_answer"]
        t["cpu_s"] = t["cpu_answer"] - t["cpu_ready"]
        return t | _summary(out, trials)


def _up(c: Client) -> bool:
    """The API answers and the worker has registered: a service as a user finds it running."""
    try:
        return bool(c.workers())
    except ClientError:
        return False


def _summary(out: StudyOut, trials: list[TrialOut]) -> dict[str, Any]:
    """The answer, the work done and the worker's and the study's own clocks."""
    b = out.best
    if out.status != "succeeded" or b is None or b.score is None:
        raise RuntimeError(f"study {out.id} ended {out.status}: {out.reason}")
    if out.spec.evaluation.holdout != HOLDOUT:  # else plain searched other rows
        raise RuntimeError(f"the study held out {out.spec.evaluation.holdout}, not {HOLDOUT}")
    score = b.score
    told = [t for t in trials if t.state in ("COMPLETE", "PRUNED")]
    start = min(t.started_at for t in told if t.started_at)
    return {
        "trials_span_s": _secs(start, max(t.ended_at for t in told if t.ended_at)),
        "study_span_s": _secs(out.created_at, out.ended_at),
        "refit_s": b.test.refit_seconds if b.test else None,
        "rate": b.dropout,
        "score": score.mean,
        "se": score.std / np.sqrt(len(score.folds)),
        "one_se": b.one_se_dropout,
        "test": b.test.score if b.test else None,
        "pruned": out.progress.pruned,
        "epochs": sum(t.epochs or 0 for t in told),
        "batch_epochs": sum(max(t.epochs or 0 for t in batch) for batch in _batches(told)),
        "batches": [len(batch) for batch in _batches(told)],
    }


def _batches(trials: list[TrialOut]) -> list[list[TrialOut]]:
    """Trials in the batches the worker trained together: one worker creates a batch's trials
    one after another, then trains them for a second or more before it creates the next."""
    out: list[list[TrialOut]] = []
    last = None
    for t in sorted(trials, key=lambda t: t.number):
        if last is None or t.started_at is None or _secs(last, t.started_at) > 1.0:
            out.append([])
        out[-1].append(t)
        last = t.started_at
    return out


# --- the report ------------------------------------------------------------------------------


def machine(threads: int) -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__}


def peak() -> float:
    """bench_engine's matmul peak, the best of three: other jobs only ever lower it."""
    return max(matmul_peak(CPU) for _ in range(3))


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def report(info: dict[str, Any], tune: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    """The results as markdown: one row per run, then the medians and the ratios."""
    lines = [
        f"# Time to the answer: droptune vs the plain Optuna script ({info['date']})",
        "",
        f"Command: `{info['command']}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with "
        f"{info['threads']} threads; float32 matmul peak {info['peak0']:.0f} GFLOP/s at the start,"
        f" {info['peak1']:.0f} at the end. Load average (1, 5, 15 min): {info['load0']} at the "
        f"start, {info['load1']} at the end.",
        "",
        "| round | side | load | to answer s (cold) | CPU s (cold) | end s | epochs | pruned |"
        " best rate | mean CV acc ± SE | one-SE rate | held-out acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, pair in enumerate(zip(tune, base, strict=True), 1):
        for side, r in zip(("droptune", "plain"), pair, strict=True):
            extra = (
                f"{r['end_s']:.1f} | {r['epochs']} | {r['pruned']} | {r['rate']:.3f} |"
                f" {r['score']:.4f} ± {r['se']:.4f} | {r['one_se']:.3f} | {r['test']:.4f}"
                if side == "droptune"
                else f"— | {r['epochs']} | {r['pruned']} | {r['rate']:.3f} |"
                f" {r['score']:.4f} ± {r['se']:.4f} | — | —"
            )
            lines.append(
                f"| {i} | {side} | {r['load']} | {r['answer_s']:.1f} ({r['cold_s']:.1f}) |"
                f" {r['cpu_s']:.1f} ({r['cpu_cold_s']:.1f}) | {extra} |"
            )
    lines += ["", *summary_lines(tune, base)]
    return "\n".join(lines) + "\n"


def summary_lines(tune: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[str]:
    def pair(key: str) -> str:
        t, b = med(tune, key), med(base, key)
        return f"droptune {t:.1f} s, plain {b:.1f} s: **{b / t:.1f}x**"

    return [
        f"Medians of {len(tune)} rounds. To the answer (droptune: submit to the last trial told,"
        f" the service already running; plain: `study.optimize`): {pair('answer_s')}. Cold"
        f" (droptune from launching serve + worker, plain from `python script.py`):"
        f" {pair('cold_s')}. CPU seconds to the answer (droptune: serve + worker after they were"
        f" ready; plain: its process during optimize): {pair('cpu_s')}.",
        "",
        f"droptune's parts: serve + worker ready {med(tune, 'ready_s'):.1f} s after launch;"
        f" first trial start to last trial told (worker clock) {med(tune, 'trials_span_s'):.1f} s;"
        f" submit to the study's end {med(tune, 'end_s'):.1f} s (study record"
        f" {med(tune, 'study_span_s'):.1f} s), of which the final refit {med(tune, 'refit_s'):.1f}"
        f" s. plain: Python, imports, data and create_study {med(base, 'startup_s'):.1f} s"
        f" before optimize; both searched the same {base[0]['rows']} rows.",
        "",
        f"Work: epochs trained over all trials, droptune {med(tune, 'epochs'):.0f}, plain"
        f" {med(base, 'epochs'):.0f}; wall s per trial-epoch droptune"
        f" {med(tune, 'answer_s') / med(tune, 'epochs'):.3f}, plain"
        f" {med(base, 'answer_s') / med(base, 'epochs'):.3f}. droptune's batches (trials):"
        f" {tune[0]['batches']}, {med(tune, 'epochs') / med(tune, 'batch_epochs'):.1f} trials"
        " trained together per epoch on average (pruned members leave their batch).",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    ap.add_argument(
        "--search",
        type=json.loads,
        default={},
        help='JSON merged into droptune\'s search spec, e.g. \'{"sampler": "design", '
        '"pruner": "paired", "stop_when_settled": true}\' (the plain script is unchanged)',
    )
    args = ap.parse_args(argv)
    if args.search:
        TUNED["search"] = {**TUNED.get("search", {}), **args.search}
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    info |= {"date": dt.date.today().isoformat(), "load0": load(), "peak0": peak()}
    info["command"] = " ".join([".venv/bin/python", "bench/bench_study.py", *sys.argv[1:]])
    print(
        f"{info['cpu']}, {info['threads']} threads, peak {info['peak0']:.0f} GFLOP/s,"
        f" load {info['load0']}",
        flush=True,
    )
    tune: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    for i in range(1, args.rounds + 1):
        for side, fn, runs in (("droptune", droptune_round, tune), ("plain", plain_round, base)):
            before = load().split()[0]
            r = fn(args.threads) | {"load": before}
            runs.append(r)
            print(
                f"round {i} {side:8s} to answer {r['answer_s']:6.1f} s  CPU {r['cpu_s']:6.1f} s"
                f"  best {r['rate']:.3f}"
                f" acc {r['score']:.4f}  epochs {r['epochs']}  load {before}",
                flush=True,
            )
    info |= {"load1": load(), "peak1": peak()}
    text = report(info, tune, base)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 0


CPU = torch.device("cpu")

if __name__ == "__main__":
    raise SystemExit(main())
