"""The deployment files: the compose topology, its configuration, the image's health check.

No Docker engine runs here: the compose file is validated against the
Compose Specification's JSON schema (vendored by check-jsonschema), every
service's command is parsed by segnode's own command line, and the
configuration it mounts passes ``segnode config check``. The topology itself
runs without containers in ``test_distributed.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from node.cli import build_parser
from node.config import load_config
from tests.node.conftest import REPO

COMPOSE = REPO / "deploy" / "compose.yaml"


def test_compose_file_follows_the_compose_specification() -> None:
    tool = shutil.which("check-jsonschema", path=str(REPO / ".venv" / "bin")) or shutil.which(
        "check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema not installed (pip install -e '.[dev]')")
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_run_segnode_roles_on_postgres_and_redis() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "redis", "receiver", "web"} <= services.keys()
    workers = [name for name, svc in services.items() if svc.get("command", [""])[0] == "worker"]
    assert len(workers) == 2
    for name, service in services.items():
        if service.get("image", "").startswith("segnode"):
            args = build_parser().parse_args(service["command"])  # a wrong flag exits here
            assert args.command in ("serve", "worker"), name
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_configuration_is_valid_with_its_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGNODE_DB_PASSWORD", "s3cret")
    monkeypatch.setenv("SEGNODE_WEB_TOKEN", "t" * 24)
    config = load_config(REPO / "deploy" / "config.yaml")
    assert config.database_url == "postgresql://segnode:s3cret@postgres:5432/segnode"
    assert config.queue.backend == "celery" and config.queue.broker_url == "redis://redis:6379/0"
    assert config.web.token == "t" * 24
    monkeypatch.delenv("SEGNODE_DB_PASSWORD")
    result = subprocess.run([sys.executable, "-m", "node.cli", "config", "check",
                             str(REPO / "deploy" / "config.yaml")], capture_output=True,
                            text=True, timeout=120, check=False, cwd=REPO)
    assert result.returncode == 2
    assert "database.url: environment variable SEGNODE_DB_PASSWORD is not set" in result.stderr


def test_image_checks_readiness() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert "USER 10001" in text
