"""Fixtures for the end-to-end tests: phantom DICOM series and one CLI run over them."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dicom_io.phantom_series import write_series
from model.phantom import Phantom, make_grid
from tests.servers import PostgreSQL, postgresql_available

REPO = Path(__file__).resolve().parents[2]
SEGNODE = [sys.executable, "-m", "node.cli"]

#: Each phantom case: name -> (orientation, spacing (slice, row, col) mm,
#: modality, reversed slice axis, shuffled file names).
CASES = {
    "axial_reversed_shuffled": ("axial", (5.0, 3.5, 3.5), "MR", True, True),
    "coronal": ("coronal", (4.0, 4.0, 3.5), "MR", False, False),
    "oblique": ("oblique", (5.0, 3.5, 3.5), "MR", False, True),
    "ct_rescaled": ("axial", (5.0, 3.5, 3.5), "CT", False, False),
}


@dataclass(frozen=True)
class PhantomCase:
    """A phantom series on disk and the truth it was made from."""

    name: str
    folder: Path
    series_uid: str
    modality: str
    phantom: Phantom


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``segnode`` in a subprocess from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*SEGNODE, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def _write_case(root: Path, name: str, index: int) -> PhantomCase:
    orientation, spacing, modality, reverse, shuffle = CASES[name]
    rng = np.random.default_rng(100 + index)
    phantom = Phantom(seed=100 + index, jitter=0.6)
    grid = make_grid(orientation, spacing, reversed_slices=reverse, rng=rng)
    image, _ = phantom.sample(grid, modality=modality, rng=rng)
    folder = root / "input" / f"study{index}" / name
    rescale = (1.0, -1024.0) if modality == "CT" else None
    paths = write_series(
        image, folder, modality=modality, series_number=index + 1, shuffle_names=shuffle,
        rng=rng, uid_seed=f"e2e-{name}", rescale=rescale, series_description=name,
    )
    import pydicom

    series_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    return PhantomCase(name, folder, series_uid, modality, phantom)


def _write_broken_series(root: Path) -> str:
    """An axial series with one slice removed from its middle: must be refused."""
    phantom = Phantom(seed=99)
    grid = make_grid("axial", (8.0, 8.0, 8.0), fov_mm=(160.0, 300.0, 400.0))
    image, _ = phantom.sample(grid, modality="MR")
    paths = write_series(image, root / "input" / "broken", uid_seed="e2e-broken")
    paths[len(paths) // 2].unlink()
    import pydicom

    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


@dataclass(frozen=True)
class E2ERun:
    """One ``segnode segment`` run over all phantom cases."""

    root: Path
    out: Path
    cases: dict[str, PhantomCase]
    broken_uid: str
    first: subprocess.CompletedProcess[str]
    report: dict


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory: pytest.TempPathFactory) -> E2ERun:
    """Write every phantom case plus a broken series and a stray file, then segment."""
    root = tmp_path_factory.mktemp("e2e")
    cases = {name: _write_case(root, name, i) for i, name in enumerate(CASES)}
    broken_uid = _write_broken_series(root)
    (root / "input" / "notes.txt").write_text("not DICOM\n")
    out = root / "out"
    # Tile step 0.5 is nnU-Net's own default; segnode's CPU default (0.75)
    # trades a little accuracy at patch borders for speed on real models.
    result = run_cli("segment", root / "input", "--out", out, "--device", "cpu",
                     "--tile-step", "0.5", "--report", root / "run.json",
                     "--models-dir", root / "models")
    report = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    return E2ERun(root, out, cases, broken_uid, result, report)


@pytest.fixture()
def copy_case(tmp_path: Path, e2e_run: E2ERun):
    """Copy one phantom case's input folder to a fresh place."""

    def _copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(e2e_run.cases[name].folder, target)
        return target

    return _copy


@pytest.fixture()
def clock():
    """A clock that only moves when the test moves it."""
    from tests.node.fakes import FakeClock

    return FakeClock()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgreSQL]:
    """One throwaway PostgreSQL cluster for the session (skips when there is none)."""
    reason = postgresql_available()
    if reason is not None:
        pytest.skip(reason)
    server = PostgreSQL().start()
    yield server
    server.close()


_DATABASES = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalogue URL on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/c.db"
    server: PostgreSQL = request.getfixturevalue("postgres_server")
    name = f"test_{next(_DATABASES)}"
    server.psql(f"CREATE DATABASE {name}", database="postgres")
    return server.socket_url.replace("/segnode?", f"/{name}?")
