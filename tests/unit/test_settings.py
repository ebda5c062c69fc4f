"""One DROPTUNE_* settings base: no field declared twice, flags over variables, env round trip."""

from __future__ import annotations

import inspect
import os
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from droptune.client import launch
from droptune.client.cli.main import app
from droptune.core.settings import StorageSettings
from droptune.service.settings import ServiceSettings
from droptune.worker.run.settings import WorkerSettings

CLASSES = (StorageSettings, ServiceSettings, WorkerSettings)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets: none from the shell that runs the tests."""
    for name in list(os.environ):
        if name.upper().startswith("DROPTUNE_"):
            monkeypatch.delenv(name)


def own_fields(cls: type) -> set[str]:
    return set(inspect.get_annotations(cls))  # this class's own, not its bases'


def test_no_field_is_declared_twice() -> None:
    for a, b in combinations(CLASSES, 2):
        assert own_fields(a) & own_fields(b) == set(), (a.__name__, b.__name__)
    assert own_fields(StorageSettings) == {
        "database_url",
        "lease_grace_seconds",
        "recover_every_seconds",
        "pg_prepared_statements",
        "listen_url",
        "worker_memory_gb",
    }
    for cls in (ServiceSettings, WorkerSettings):
        assert issubclass(cls, StorageSettings)
        assert set(cls.model_fields) == own_fields(cls) | own_fields(StorageSettings)
    # what the API and the workers both read comes from the base, nowhere else
    shared = set(ServiceSettings.model_fields) & set(WorkerSettings.model_fields)
    assert shared == set(StorageSettings.model_fields)


def test_defaults_are_unchanged() -> None:
    service, worker = ServiceSettings(), WorkerSettings()
    for s in (service, worker):
        assert s.database_url == "sqlite:///./droptune.db"
        assert (s.lease_grace_seconds, s.recover_every_seconds) == (30.0, 5.0)
    assert (service.host, service.port, service.dashboard) == ("127.0.0.1", 8000, True)
    assert (service.max_wait_seconds, service.max_upload_mb) == (600.0, 256.0)
    assert (service.max_columns, service.max_cells, service.max_categories) == (
        10_000,
        500_000_000,
        256,
    )
    assert (worker.device, worker.threads, worker.max_batch_trials) == ("auto", None, None)
    assert (worker.heartbeat_seconds, worker.idle_wait_seconds) == (5.0, 2.0)
    assert (worker.exit_when_idle, worker.cache_mb) == (False, 4096.0)
    assert worker.cache_dir == Path.home() / ".cache" / "droptune" / "datasets"


def test_from_flags_overrides_variables_only_where_a_flag_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DROPTUNE_PORT", "9000")
    monkeypatch.setenv("DROPTUNE_HOST", "0.0.0.0")
    s = ServiceSettings.from_flags(host=None, port=8001, database_url=None)
    assert (s.host, s.port, s.database_url) == ("0.0.0.0", 8001, "sqlite:///./droptune.db")


@pytest.mark.parametrize(
    "settings",
    [
        StorageSettings(database_url="postgresql+psycopg://u@h/db", lease_grace_seconds=0.1),
        ServiceSettings(host="::", port=1, dashboard=False, max_wait_seconds=1e-3),
        WorkerSettings(
            device="cuda:1",
            threads=3,
            exit_when_idle=True,
            cache_dir=Path("/tmp/x y"),
            recover_every_seconds=0.25,
        ),
        WorkerSettings(),
    ],
)
def test_to_env_reads_back_as_the_same_settings(
    settings: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = settings.to_env({"PATH": "/bin", "DROPTUNE_THREADS": "8", "droptune_port": "9"})
    assert env["PATH"] == "/bin"  # the rest of the environment goes to the child too
    for name, value in env.items():
        if name.startswith("DROPTUNE_"):
            monkeypatch.setenv(name, value)
    assert type(settings)() == settings
    if isinstance(settings, WorkerSettings) and settings.threads is None:
        assert "DROPTUNE_THREADS" not in env  # None is left out, not inherited from the base
    if isinstance(settings, ServiceSettings):
        assert "droptune_port" not in env  # variables are read case-insensitively


class Captured:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.args: tuple[Any, ...] = ()
        for name in ("serve", "worker", "up"):
            monkeypatch.setattr(launch, name, self.capture)

    def capture(self, *args: Any) -> int:
        self.args = args
        return 0


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args, env=env)
    return r.exit_code, r.stderr


def test_serve_flags_override_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    got = Captured(monkeypatch)
    env = {"DROPTUNE_HOST": "0.0.0.0", "DROPTUNE_PORT": "9000", "DROPTUNE_DASHBOARD": "false"}
    assert run(["serve", "--port", "8001", "--database-url", "sqlite:///f.db"], env)[0] == 0
    (s,) = got.args
    assert isinstance(s, ServiceSettings)
    assert (s.host, s.port, s.database_url, s.dashboard) == (
        "0.0.0.0",
        8001,
        "sqlite:///f.db",
        False,
    )


def test_worker_flags_override_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    got = Captured(monkeypatch)
    env = {
        "DROPTUNE_DEVICE": "cuda",
        "DROPTUNE_THREADS": "8",
        "DROPTUNE_DATABASE_URL": "sqlite:///env.db",
        "DROPTUNE_EXIT_WHEN_IDLE": "true",
    }
    assert run(["worker", "--device", "cpu", "--threads", "2"], env)[0] == 0
    (s,) = got.args
    assert isinstance(s, WorkerSettings)
    assert (s.device, s.threads, s.database_url) == ("cpu", 2, "sqlite:///env.db")
    assert s.exit_when_idle  # no --exit-when-idle: the variable still counts
    assert run(["worker", "--exit-when-idle"], {})[0] == 0
    assert got.args[0].exit_when_idle


def test_up_reads_host_and_port_variables_and_its_flags_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`DROPTUNE_PORT=8080 make run` serves on 8080, as `serve` does (issue 22: `up` ignored
    DROPTUNE_PORT, so the Quick start could not change its port)."""
    got = Captured(monkeypatch)
    env = {
        "DROPTUNE_HOST": "0.0.0.0",
        "DROPTUNE_PORT": "8123",
        "DROPTUNE_DATABASE_URL": "sqlite:///env.db",
        "DROPTUNE_HEARTBEAT_SECONDS": "1.5",
    }
    assert run(["up", "--workers", "0"], env)[0] == 0
    api, workers, n = got.args
    assert (api.host, api.port, api.database_url) == ("0.0.0.0", 8123, "sqlite:///env.db")
    assert (workers.database_url, workers.heartbeat_seconds, n) == ("sqlite:///env.db", 1.5, 0)
    flags = ["--host", "127.0.0.1", "--database-url", "sqlite:///f.db", "--port", "8002"]
    assert run(["up", *flags], env)[0] == 0
    api, workers, n = got.args
    assert (api.host, api.port, api.database_url, workers.database_url, n) == (
        "127.0.0.1",
        8002,
        "sqlite:///f.db",
        "sqlite:///f.db",
        None,
    )
    code, err = run(["up"], {**env, "DROPTUNE_PORT": "not a port"})
    assert code == 1 and err.strip().startswith("error: DROPTUNE_PORT='not a port'"), err


@pytest.mark.parametrize("command", ["serve", "worker", "up"])
def test_a_bad_variable_is_one_line_before_anything_starts(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = Captured(monkeypatch)
    code, err = run([command], {"DROPTUNE_LEASE_GRACE_SECONDS": "abc"})
    assert (code, got.args) == (1, ())
    assert err.strip().splitlines() == [
        "error: DROPTUNE_LEASE_GRACE_SECONDS='abc': "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_prepared_statements_can_be_turned_off_for_pgbouncer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from droptune.storage.sql.db import engine_kwargs

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert "connect_args" not in engine_kwargs(url)
    monkeypatch.setenv("DROPTUNE_PG_PREPARED_STATEMENTS", "false")
    assert engine_kwargs(url)["connect_args"] == {"prepare_threshold": None}
    assert "prepare_threshold" not in engine_kwargs("sqlite:///x.db")["connect_args"]
