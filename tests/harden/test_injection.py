"""Injection through the real listener: UIDs, descriptions, pages and logs (short budget)."""

from __future__ import annotations

from pathlib import Path

from harden.injection import BAD_UIDS, CHROMIUM, run
from harden.results import format_table


def test_injection_every_row_passes() -> None:
    rows = run("short")
    assert all(r.passed for r in rows), format_table(rows) + "\n" + "\n".join(
        f"{r.check}: {f}" for r in rows for f in r.findings)
    by_check = {r.check: r for r in rows}
    assert by_check["inject: bad UIDs answered Cannot Understand, quarantined"].tried == len(
        BAD_UIDS)
    assert by_check["inject: no file outside spool, quarantine, database"].tried > len(BAD_UIDS)
    assert "longest 655" in by_check["inject: hostile descriptions stored, association alive"
                                     ].figure
    assert by_check["logs: no raw control characters, no patient data"].tried > 100
    browser = by_check["dashboard: hostile text shown escaped (Chromium)"]
    if Path(CHROMIUM).exists():
        assert browser.tried == 3
    else:
        assert browser.figure.startswith("not run")
