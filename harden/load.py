"""Many associations at once against a real listener, with the real assembler alongside.

``associations`` allowed peers start together (a barrier) and each sends
``instances`` 8 x 8 CT instances over one association, as a scanner does:
one series after another (10 instances each). Meanwhile the node's own
:class:`node.assembler.Assembler` polls the same SQLite catalogue every
50 ms with a 0.3 s quiet time and a rule queuing a job per series, so
series completed mid-load are read and written (decision, job) while
instances are catalogued, and late ones reopen them.

Not here: jobs do not run (no worker; inference would measure the model,
not the listener, and is too heavy for ``make test`` on 2 cores), so the
CPU competition is the assembler's and the senders' own, not a model's.
The senders are threads of this process, so they share the node's GIL; a
variant with one child process per sender reached the same throughput
(short budget) but costs seconds of start-up that ``make test`` lacks.

Pass: every C-STORE answered Success, catalogue rows == instances sent,
every series complete with its job once the load is over, and no assembler
pass failed. The figure gives the median and 99th percentile of the C-STORE
response time (``send_c_store`` call to response, per instance).

Usage::

    .venv/bin/python -m harden.run_all --only load [--budget short|long]
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage

from harden.hostile_peers import NodeUnderTest, associate, node_under_test, scu, tiny_instance
from harden.results import CheckResult
from node.assembler import Assembler
from node.catalogue import jobs
from node.jobqueue import SqlJobQueue

__all__ = ["run"]

_BUDGETS = {"short": (4, 50), "long": (10, 500)}
_SERIES_SIZE = 10
_SETTINGS = {"timing": {"series_quiet_s": 0.3, "study_quiet_s": 0.6},
             "rules": [{"name": "load", "whole_study": False}]}


@dataclass
class _Sender:
    """One peer's association: its response times and what went wrong."""

    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def send(self, node: NodeUnderTest, count: int, start: threading.Barrier) -> None:
        try:
            self._send(node, count, start)
        except Exception as exc:  # noqa: BLE001 - a crashed sender is a finding
            start.abort()
            self.problems.append(f"sender crashed: {type(exc).__name__}: {exc}")

    def _send(self, node: NodeUnderTest, count: int, start: threading.Barrier) -> None:
        assoc = associate(scu(CTImageStorage), node.port, node.config.node.ae_title,
                          node.limit_s)
        start.wait(timeout=30)
        if not assoc.is_established:
            self.problems.append("association not established")
            return
        study = generate_uid()
        for number in range(count):
            if number % _SERIES_SIZE == 0:
                series = generate_uid()
            ds = tiny_instance(series, study, number % _SERIES_SIZE + 1)
            began = time.monotonic()
            status = getattr(assoc.send_c_store(ds), "Status", None)
            self.latencies.append(time.monotonic() - began)
            if status != 0:
                self.problems.append(f"instance {number}: status {status}")
                if not assoc.is_established:
                    self.problems.append(f"association lost after {number + 1} instances")
                    return
        assoc.release()


@dataclass
class _AssemblerLoop:
    """The real assembler, polled every 50 ms until stopped."""

    assembler: Assembler
    stop: threading.Event = field(default_factory=threading.Event)
    passes: int = 0
    slowest_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.wait(0.05):
            began = time.monotonic()
            try:
                self.assembler.run_once()
            except Exception as exc:  # noqa: BLE001 - a failed pass is a finding
                self.problems.append(f"assembler pass {self.passes}: {type(exc).__name__}: {exc}")
            self.slowest_s = max(self.slowest_s, time.monotonic() - began)
            self.passes += 1


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _settle(node: NodeUnderTest, series_total: int, limit_s: float) -> dict[str, int]:
    """Series counts by state once all are complete, or as they are after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        counts = node.catalogue.series_counts()
        if counts.get("complete", 0) >= series_total or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def run(budget: str = "short") -> list[CheckResult]:
    """The load check and the assembler's row; ``budget`` is ``"short"`` or ``"long"``."""
    associations, instances = _BUDGETS[budget]
    sent = associations * instances
    series_total = associations * -(-instances // _SERIES_SIZE)
    with tempfile.TemporaryDirectory(prefix="segnode-load-") as folder, \
            node_under_test(Path(folder), _SETTINGS, max_associations=associations + 2) as node:
        loop = _AssemblerLoop(Assembler(node.config, node.catalogue,
                                        SqlJobQueue(node.catalogue)))
        assembling = threading.Thread(target=loop.run, daemon=True)
        assembling.start()
        senders = [_Sender() for _ in range(associations)]
        barrier = threading.Barrier(associations)
        threads = [threading.Thread(target=s.send, args=(node, instances, barrier))
                   for s in senders]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - began
        counts = _settle(node, series_total, limit_s=10.0)
        loop.stop.set()
        assembling.join()
        stored = node.catalogue.instance_count()
        queued = node.catalogue.count_by_state(jobs)
    latencies = [t for s in senders for t in s.latencies]
    findings = [p for s in senders for p in s.problems]
    if stored != sent:
        findings.append(f"{stored} of {sent} instances catalogued")
    figure = (f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms per C-STORE; "
              f"{sent / seconds:.0f} instances/s" if latencies else "nothing sent")
    load = CheckResult(f"load: {associations} associations x {instances} instances", sent,
                       len(findings), figure, findings)
    assembler_findings = list(loop.problems)
    if counts.get("complete", 0) != series_total or sum(queued.values()) < series_total:
        assembler_findings.append(f"series {counts}, jobs {queued}, of {series_total} series")
    assembled = CheckResult("load: assembler alongside", loop.passes, len(assembler_findings),
                            f"{series_total} series complete with jobs; slowest pass "
                            f"{loop.slowest_s * 1000:.0f} ms", assembler_findings)
    return [load, assembled]
