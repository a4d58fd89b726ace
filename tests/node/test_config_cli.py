"""``segnode config check`` and ``segnode serve`` refusing a bad ``config.yaml``."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.node.conftest import REPO, run_cli

Run = subprocess.CompletedProcess


def _bad_config(folder: Path) -> Path:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["node"]["port"] = 99999
    raw["processing"]["device"] = "gpu"
    folder.mkdir()
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Run]]:
    """Every command of this module, each in its own process: name -> (file given, run)."""
    root = tmp_path_factory.mktemp("config_cli")
    good = Path(shutil.copy(REPO / "config.yaml", root / "config.yaml"))
    bad_check = _bad_config(root / "bad_check")
    bad_serve = _bad_config(root / "bad_serve")
    compressed = root / "config.yaml.gz"
    compressed.write_bytes(gzip.compress(good.read_bytes()))
    missing = root / "absent.yaml"
    commands = {
        "good": (good, ("config", "check", good)),
        "bad": (bad_check, ("config", "check", bad_check)),
        "serve_bad": (bad_serve, ("serve", "--config", bad_serve)),
        "missing": (missing, ("config", "check", missing)),
        "binary": (compressed, ("config", "check", compressed)),
    }
    return {name: (path, run_cli(*args, timeout=120)) for name, (path, args) in commands.items()}


def test_check_good_config(runs: dict[str, tuple[Path, Run]]) -> None:
    path, result = runs["good"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{path}: valid" in result.stdout


def test_check_bad_config_names_each_key_path(runs: dict[str, tuple[Path, Run]]) -> None:
    path, result = runs["bad"]
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "node.port: Input should be less than or equal to 65535" in result.stderr
    assert "processing.device: must be auto, cpu, cuda or cuda:N, got 'gpu'" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_bad_config_before_doing_anything(
    runs: dict[str, tuple[Path, Run]],
) -> None:
    path, result = runs["serve_bad"]
    assert result.returncode == 2
    assert "node.port: Input should be less than or equal to 65535" in result.stderr
    assert "processing.device:" in result.stderr
    # The catalogue and spool (var/ beside the file) were never created.
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("case, words", [
    ("missing", "cannot be read: No such file or directory"),
    ("binary", "Configuration file"),
])
def test_unreadable_file_gives_a_clear_message(
    runs: dict[str, tuple[Path, Run]], case: str, words: str,
) -> None:
    path, result = runs[case]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 2
    assert f"'{path}'" in result.stderr and words in result.stderr
