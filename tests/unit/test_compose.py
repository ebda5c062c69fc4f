"""docker-compose.yml only uses commands, flags and settings that exist (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import yaml

from droptune.client.cli.main import app
from droptune.core.settings import StorageSettings
from droptune.service.settings import ServiceSettings
from droptune.worker.run.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def settings_env() -> set[str]:
    fields: set[str] = set()
    for cls in (ServiceSettings, WorkerSettings, StorageSettings):
        fields |= {f"DROPTUNE_{name.upper()}" for name in cls.model_fields}
    return fields


def test_services_and_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "init", "api", "worker"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "replicas" in worker["deploy"]
    assert all("healthcheck" in s for n, s in services.items() if n != "init")
    # The API listens on every interface: the stack cannot start without an admin token, and
    # the API waits for it to be stored.
    assert services["api"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert ":?" in services["init"]["environment"]["DROPTUNE_ADMIN_TOKEN"]


def test_every_command_and_flag_exists_in_the_cli() -> None:
    root = typer.main.get_command(app)
    commands = root.commands  # type: ignore[attr-defined]
    for name in ("init", "api", "worker"):
        argv = compose()["services"][name]["command"]
        assert argv[0] == "droptune"
        sub = commands[argv[1]]
        if name == "init":  # droptune token create ...
            sub, argv = sub.commands[argv[2]], argv[1:]
        flags = {opt for p in sub.params for opt in getattr(p, "opts", [])}
        used = {a for a in argv[2:] if a.startswith("--")}
        assert used <= flags, f"{name}: unknown flags {used - flags}"
        # click parses the real argument list: a typo or a bad value fails here
        sub.make_context(argv[1], list(argv[2:]), resilient_parsing=False)


def test_every_environment_variable_is_a_setting() -> None:
    known = settings_env()
    for name, service in compose()["services"].items():
        if name == "postgres":
            continue
        env = set(service["environment"]) - {"DROPTUNE_ADMIN_TOKEN"}  # read by `init`'s flag
        assert env and env <= known, f"{name}: unknown settings {env - known}"
        assert "DROPTUNE_DATABASE_URL" in env
