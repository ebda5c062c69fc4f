"""The README's polling scripts, run as they stand against a real `serve` and worker: the Python
one with the server's and worker's packages made unimportable (what `pip install droptune`
gives a script), the REST one with curl and jq."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from droptune.client import Client
from tests import procs

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
# What the client extra leaves out: the script must run without any of them.
HEAVY = (
    "torch",
    "optuna",
    "optuna_dashboard",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "numpy",
    "scipy",
    "pandas",
    "sklearn",
    "matplotlib",
    "plotly",
)
BLOCK = "import sys\nfor m in {heavy!r}:\n    sys.modules[m] = None  # import m raises\n"


def readme_block(marker: str) -> str:
    """The fenced block right after `<!-- marker -->` in the README."""
    text = README.read_text()
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"README has no block after <!-- {marker} -->"
    return found.group(1)


def shape(line: str) -> str:
    """A printed line with its numbers replaced: what the README's sample must match."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", line)


def light(code: str) -> str:
    """`code` run with the server's and worker's packages unimportable."""
    return BLOCK.format(heavy=HEAVY) + code


def test_the_client_alone_cannot_start_a_server() -> None:
    """On a client-only install the server's commands say which extra to install."""
    run = (
        "from droptune.client.cli.main import main\nsys.argv = ['droptune', *sys.argv[1:]]\nmain()"
    )
    for cmd, extra in (
        ("serve", "server"),
        ("worker", "worker"),
        ("up", "server,worker"),
        ("db upgrade", "server"),  # the database's modules: either extra
        ("token list", "server"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", light(run), *cmd.split()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'droptune[{extra}]'" in lines[0], out.stderr


def test_readme_polling_scripts_run_as_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    with procs.service(url, tmp_path) as (base, _):
        script = readme_block("polling-client").replace("http://127.0.0.1:8000", base)
        out = subprocess.run(
            [sys.executable, "-c", light(script)], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        first, *rest = out.stdout.splitlines()
        with Client(base) as c:
            (study,) = c.list().items
            best, trials = c.best(study.id), c.trials(study.id)
        assert best.state == "final" and best.recommended is not None
        rec = best.recommended
        assert rec.score is not None
        want = f"{rec.dropout} {rec.params} {rec.score.mean} {rec.score.se}"
        assert first == want, (first, want)
        assert [line.split()[:2] for line in rest] == [[str(t.number), t.state] for t in trials]
        assert len(rest) == 12

        # the README's sample output reads as this run's does (numbers aside)
        shown = readme_block("polling-client-output").splitlines()
        assert [shape(line) for line in shown[:2]] == [shape(first), shape(rest[0])], shown

        if shutil.which("curl") is None or shutil.which("jq") is None:
            pytest.skip("the REST script needs curl and jq")  # both on this image and CI's
        rest_script = readme_block("polling-rest").replace("http://127.0.0.1:8000", base)
        out = subprocess.run(
            ["bash", "-c", rest_script], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        first, *lines = out.stdout.splitlines()
        with Client(base) as c:
            second = c.list().items[0]
            best2 = c.best(second.id)
        assert second.id != study.id and best2.state == "final"
        rec2 = best2.recommended
        assert rec2 is not None and rec2.score is not None
        rate, mean, pm, se = first.split()
        assert pm == "±", first
        got = [float(rate), float(mean), float(se)]
        assert got == pytest.approx([rec2.dropout, rec2.score.mean, rec2.score.se])
        assert len(lines) == 12 and all(line.split()[0].isdigit() for line in lines)
