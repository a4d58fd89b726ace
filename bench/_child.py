"""What the benchmark scripts share: their error type, one case in a fresh process, peak RSS."""

from __future__ import annotations

import ctypes
import gc
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
    try:
        proc = subprocess.run([sys.executable, script, "--run", name, *extra], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name}: no result after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchError(f"{name}: exit status {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def status_mib(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> float:
    """Reset this process's peak resident set to its current one; returns that, in MiB.

    Freed heap memory is handed back first: it would stay resident, and a
    call reusing it would not raise the peak. The peak of what runs next is
    ``status_mib("VmHWM")`` minus the value returned.
    """
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        raise BenchError(f"cannot reset the peak RSS (/proc/self/clear_refs): {exc}") from exc
    return status_mib("VmRSS")
