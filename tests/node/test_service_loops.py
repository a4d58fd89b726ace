"""The node's loops: a round that did work wakes the next loop at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from node.config import DatabaseConfig, NodeConfig, StorageConfig
from node.service import Node


def _node(tmp_path: Path) -> Node:
    return Node(NodeConfig(storage=StorageConfig(
        spool_dir=tmp_path / "spool", output_dir=tmp_path / "out",
        quarantine_dir=tmp_path / "quarantine", models_dir=tmp_path / "models"),
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'segnode.db'}")))


def test_busy_round_wakes_the_next_loop_and_idle_one_waits(tmp_path: Path) -> None:
    node = _node(tmp_path)
    rounds: dict[str, list[float]] = {"first": [], "second": []}
    first_busy = threading.Event()

    def first() -> bool:
        rounds["first"].append(time.monotonic())
        return first_busy.is_set() and len(rounds["first"]) == 2

    def second() -> bool:
        rounds["second"].append(time.monotonic())
        return False

    try:
        wake_second = node._loop("second", second, interval=30.0)
        wake_first = node._loop("first", first, interval=30.0, then=[wake_second])
        deadline = time.monotonic() + 5
        while len(rounds["second"]) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rounds["first"]) == 1 and len(rounds["second"]) == 1  # idle: both wait
        first_busy.set()
        started = time.monotonic()
        wake_first.set()  # the first does work in its second round...
        while ((len(rounds["second"]) < 2 or len(rounds["first"]) < 3)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        # ...so the second runs again at once, not after its 30 s interval, and
        # the first, busy, went straight into a third round.
        assert len(rounds["second"]) == 2 and rounds["second"][1] - started < 2.0
        time.sleep(0.2)
        assert len(rounds["first"]) == 3 and len(rounds["second"]) == 2
    finally:
        node.stop(timeout_s=5)
    assert all(not t.is_alive() for t in node._threads)  # stop wakes the waiting loops
