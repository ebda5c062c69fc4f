"""`bench/bench_api.py --hey`: `/studies/{id}/best` under `hey` (a compiled HTTP load generator,
`apt-get install hey`), beside a bare uvicorn + FastAPI app answering the same bytes, in one run.

* paced: `hey -z S -c 200 -q 5` (200 keep-alive pollers, 1 000 requests/s offered) on `/best`:
  answered req/s, p50, p99, errors;
* saturated: `hey -z S -c C` (no pacing) on `/best`, then on the bare app (bench/bare_app.py,
  same uvicorn options and process count, the same body from memory): req/s of each and their
  ratio; the paced run on the bare app too, for its p50/p99.

hey's own CPU shares the machine with the server: the ratio is the number to compare across
runs, since both sides pay it alike.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from proc_cpu import cpu_s, proc_fields

HERE = Path(__file__).resolve().parent


@dataclass
class Hey:
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    cpu_ms: float = float("nan")  # the server's CPU (its processes') per answered request


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (uvicorn's worker processes)."""
    kids = [
        int(p.name) for p in Path("/proc").glob("[0-9]*") if proc_fields(p.name)[1:2] == [str(pid)]
    ]
    return cpu_s([pid, *kids])


def measured(pid: int, run: Callable[[], Hey]) -> Hey:
    c0 = tree_cpu(pid)
    h = run()
    h.cpu_ms = (tree_cpu(pid) - c0) * 1000 / max(1, h.ok)
    return h


def hey(url: str, seconds: float, conc: int, qps: float | None, token: str | None = None) -> Hey:
    """One hey run, its summary parsed (latencies are hey's, from each request's send)."""
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(conc)]
    if token is not None:  # sent to the bare app too, which ignores it
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if qps is not None:
        cmd += ["-q", f"{qps:g}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def num(pattern: str) -> float:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    failed = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get ", out))
    ok = codes.get(200, 0)
    return Hey(
        rps=num(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=num(r"50%+ in ([\d.]+) secs") * 1000,
        p99_ms=num(r"99%+ in ([\d.]+) secs") * 1000,
        ok=ok,
        errors=sum(codes.values()) - ok + failed,
    )


def bare(body: bytes, path: str, port: int, workers: int, tmp: Path) -> subprocess.Popen[bytes]:
    (tmp / "bare.json").write_bytes(body)
    args = [str(port), str(workers)]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "bare_app.py"), str(tmp / "bare.json"), path, *args],
        stdout=(tmp / "bare.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}{path}"
    return started(
        proc, lambda r: r.content == body, url, f"the bare app (log: {tmp / 'bare.log'})"
    )


def started(
    proc: subprocess.Popen[bytes], ok: Callable[[httpx.Response], bool], url: str, what: str
) -> subprocess.Popen[bytes]:
    """`proc` once `url` answers as `ok` wants (60 s at most); killed, and an error, if not."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ok(httpx.get(url, timeout=2)):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def line(case: str, h: Hey) -> str:
    cells = f"{h.rps:.0f} | {h.p50_ms:.1f} | {h.p99_ms:.1f} | {h.cpu_ms:.2f} | {h.ok} | {h.errors}"
    return f"| {case} | {cells} |"


def compare(
    base: str,
    path: str,
    ports: tuple[int, int],
    workers: int,
    seconds: float,
    tmp: Path,
    token: str | None = None,
) -> list[str]:
    """The table's rows: droptune's `/best` at `base` (its server's pid: `ports[0]`) and the
    bare app, started on port `ports[1]`; every request with `token` when given."""
    pid, port = ports
    url = base + path
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    body = httpx.get(url, headers=auth, timeout=300).raise_for_status().content  # computed once
    paced = measured(pid, lambda: hey(url, seconds, 200, 5, token))
    rows = [line(f"droptune /best, hey -c 200 -q 5 ({seconds:g} s)", paced)]
    print(rows[-1], flush=True)
    sat = measured(pid, lambda: hey(url, seconds, 50, None, token))
    rows.append(line(f"droptune /best, saturated (hey -c 50, {seconds:g} s)", sat))
    print(rows[-1], flush=True)
    proc = bare(body, path, port, workers, tmp)
    try:
        anchor = f"http://127.0.0.1:{port}{path}"
        b_sat = measured(proc.pid, lambda: hey(anchor, seconds, 50, None, token))
        rows.append(line(f"bare app, saturated (hey -c 50, {seconds:g} s)", b_sat))
        print(rows[-1], flush=True)
        b_paced = measured(proc.pid, lambda: hey(anchor, seconds, 200, 5, token))
        rows.append(line(f"bare app, hey -c 200 -q 5 ({seconds:g} s)", b_paced))
    finally:
        proc.terminate()
        proc.wait(30)
    rows.append(f"| **saturated /best ÷ bare app** | **{sat.rps / b_sat.rps:.0%}** | | | | | |")
    return rows


HEADER = [
    "| db | case | req/s | p50 ms | p99 ms | server CPU ms/req | 200s | errors |",
    "|---|---|---|---|---|---|---|---|",
]


def hey_rows(
    backend: str, path: str, serve: tuple[int, int], args: argparse.Namespace, tmp: Path
) -> list[str]:
    """bench_api.py's `--hey` cases on a started `serve` (pid, port); the bare app on port+1."""
    pid, port = serve
    base = f"http://127.0.0.1:{port}"
    token = getattr(args, "token_value", None)
    rows = compare(base, path, (pid, port + 1), args.serve_workers, args.seconds, tmp, token)
    return [f"| {backend} |{r[1:]}" for r in rows]
