"""The short fault soak of ``make test``: every fault, "lost: 0, duplicated: 0".

``make harden`` runs the same faults over 200 series with 30 kills.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from harden.faults import run, unavailable

pytestmark = pytest.mark.slow


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
def test_no_fault_loses_or_duplicates_anything() -> None:
    rows = {row.check: row for row in run("short")}
    for row in rows.values():
        assert row.passed, "\n".join(row.findings)
        assert row.figure.startswith(("lost: 0, duplicated: 0", "not run"))
    kills = rows["fault: SIGKILL (receive, job, dispatch)"]
    assert "receive 1, job 1, dispatch 1" in kills.figure  # each point was hit
    refused = re.search(r"(\d+) deliveries refused first",
                        rows["fault: PACS refusing, then accepting"].figure)
    assert refused and int(refused.group(1)) > 0  # the PACS did refuse before it accepted
    if os.geteuid() == 0:  # the spool tmpfs needs root
        assert "failed part way" in rows["fault: disk full mid-series"].figure
    if shutil.which("cc") or shutil.which("gcc"):
        assert rows["fault: wall clock jumps during quiet time"].tried == 2
