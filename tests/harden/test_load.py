"""Associations at once against a real listener with the assembler alongside (short budget)."""

from __future__ import annotations

import re

from harden import load
from harden.results import format_table


def test_load_every_instance_catalogued_and_response_times_bounded() -> None:
    rows = load.run("short")
    print(format_table(rows))
    assert [r.findings for r in rows if not r.passed] == []
    assert rows[0].tried == 4 * 50
    p50, p99 = (float(x) for x in re.findall(r"p(?:50|99) (\d+\.\d+) ms", rows[0].figure))
    assert p50 <= p99 < 3000.0  # below the node's DIMSE timeout in harden.hostile_peers
    assert rows[1].tried > 0  # the assembler ran alongside
