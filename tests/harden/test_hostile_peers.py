"""Hostile and broken peers against a real listener (the short budget of harden.hostile_peers)."""

from __future__ import annotations

import re

import pytest

from harden import hostile_peers
from harden.hostile_peers import NodeUnderTest
from harden.results import CheckResult, format_table

_Seen = dict[str, tuple[CheckResult, NodeUnderTest, list[str], int]]


@pytest.fixture(scope="module")
def seen() -> _Seen:
    """Each attack's row, its (stopped) node, its log lines and catalogued instances."""
    found: _Seen = {}

    def keep(row: CheckResult, node: NodeUnderTest) -> None:
        found[row.check] = (row, node, node.log.lines, node.catalogue.instance_count())

    rows = hostile_peers.run("short", inspect=keep)
    print(format_table(rows))
    assert [r.check for r in rows] == list(found)
    return found


def _seconds(figure: str, label: str) -> float:
    match = re.search(rf"{label} (\d+\.\d+) s", figure)
    assert match, figure
    return float(match.group(1))


def test_every_attack_passes(seen: _Seen) -> None:
    failed = {check: row.findings for check, (row, *_) in seen.items() if not row.passed}
    assert not failed
    assert len(seen) == 6


def test_allowed_peer_is_served_within_the_timeouts(seen: _Seen) -> None:
    for row, node, *_ in seen.values():
        assert _seconds(row.figure, "allowed peer served in") <= node.limit_s + 1.0, row.check


def test_idle_connections_are_closed_after_the_acse_timeout(seen: _Seen) -> None:
    row, node, lines, _ = seen["hostile: idle connections"]
    closed = _seconds(row.figure, "stalled closed after")
    assert closed <= node.config.node.acse_timeout_s + 1.0
    assert len([line for line in lines if "before an association request" in line]) <= 2


def test_half_a_pdu_is_cut_off_after_the_network_timeout(seen: _Seen) -> None:
    row, node, *_ = seen["hostile: half a P-DATA then stall"]
    closed = _seconds(row.figure, "stalled closed after")
    assert node.config.node.network_timeout_s - 0.5 <= closed
    assert closed <= node.config.node.network_timeout_s + 1.0


def test_nothing_cut_off_is_catalogued(seen: _Seen) -> None:
    # Only the allowed peer's one probe instance.
    assert seen["hostile: abort mid C-STORE"][3] == 1


def test_every_tiny_instance_is_catalogued(seen: _Seen) -> None:
    row, _, _, catalogued = seen["hostile: tiny instances on one association"]
    assert catalogued == row.tried + 1


def test_rejections_are_logged_once_per_interval_with_a_count(seen: _Seen) -> None:
    row, _, lines, _ = seen["hostile: rejected callers in a tight loop"]
    rejected = [line for line in lines if "rejected" in line]
    assert len(rejected) == 2, rejected
    held = [int(n) for n in re.findall(r"(\d+) more rejections", "\n".join(lines))]
    assert sum(held) == row.tried - 2


def test_no_log_line_holds_patient_data(seen: _Seen) -> None:
    for _, _, lines, _ in seen.values():
        text = "\n".join(lines)
        assert hostile_peers.PATIENT_NAME not in text
        assert hostile_peers.PATIENT_ID not in text
