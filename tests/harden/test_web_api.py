"""Web API and dashboard hardening: tokens, patient data, headers (short budget)."""

from __future__ import annotations

from harden.results import format_table
from harden.web_api import run


def test_web_api_every_row_passes() -> None:
    rows = run("short")
    assert all(r.passed for r in rows), format_table(rows) + "\n" + "\n".join(
        f"{r.check}: {f}" for r in rows for f in r.findings)
    by_check = {r.check: r for r in rows}
    assert by_check["web: actions refused with a wrong token"].tried >= 9  # 3 actions x 3
    assert by_check["web: off loopback, reads refused without a token"].tried >= 40
    assert by_check["web: no-store, nosniff, framing, referrer headers"].tried >= 50
