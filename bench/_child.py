"""What the benchmark scripts share: their error type and running one case in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A case could not be measured."""


def run_json_child(script: str, name: str, extra: Sequence[str] = (), timeout: float = 3600
                   ) -> dict:
    """Run ``script --run NAME [extra]`` in a fresh Python; its last stdout line, as JSON.

    A fresh process per case gives each its own peak resident set and no
    warm caches from another case.
    """
    proc = subprocess.run([sys.executable, script, "--run", name, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise BenchError(f"{name}: exit status {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])
