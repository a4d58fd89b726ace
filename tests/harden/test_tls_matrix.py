"""The TLS matrix against the real listener and segnode's SCU (short budget)."""

from __future__ import annotations

import shutil

import pytest

from harden.results import format_table
from harden.tls_matrix import run


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_matrix_every_row_passes() -> None:
    rows = run("short")
    table = format_table(rows)
    assert all(r.passed for r in rows), table + "\n" + "\n".join(
        f"{r.check}: {f}" for r in rows for f in r.findings)
    by_check = {r.check: r for r in rows}
    assert "TLSv1.2" in by_check["tls: TLS 1.2 accepted (C-ECHO)"].figure
    assert "TLSv1.3" in by_check["tls: TLS 1.3 accepted (C-ECHO)"].figure
    assert "CBC" not in by_check["tls: weak cipher suites refused"].figure
    assert by_check["tls: weak cipher suites refused"].tried >= 5
    assert "EXPIRED" in by_check["tls: expired client certificate refused (TLS 1.2)"].figure
    assert by_check["scu: valid server certificate accepted"].tried == 1
    assert sum(r.check.startswith("scu: ") for r in rows) == 4
