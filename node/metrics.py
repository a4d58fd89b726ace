"""Prometheus metrics of one node (``/metrics``).

Counters and histograms are incremented where things happen (listener,
worker, dispatcher); gauges that describe state (queue depths, jobs and
series by state, disk free) are read from the catalogue at scrape time, so
they are right after a restart too. Each :class:`NodeMetrics` has its own
registry: two nodes in one process (tests) do not share counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "NodeMetrics", "rejection_kind"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def rejection_kind(result: str) -> str:
    """A short label for an association's result: accepted, or the reason it was rejected."""
    if not result.startswith("rejected"):
        return "accepted" if result else "unknown"
    for needle, kind in (("called AE", "called_ae"), ("calling AE", "calling_ae"),
                         ("address", "address"), ("spool", "disk_full")):
        if needle in result:
            return kind
    return "other"


class _StateCollector(Collector):
    """Gauges computed from the catalogue when scraped."""

    def __init__(self, read_state: Callable[[], dict[str, Any]]) -> None:
        self._read = read_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._read()
        for name, help_text, key in (
                ("segnode_jobs", "Jobs by state", "jobs"),
                ("segnode_deliveries", "Outbox deliveries by state", "outbox"),
                ("segnode_series", "Series by state", "series")):
            family = GaugeMetricFamily(name, help_text, labels=["state"])
            for value_state, count in sorted(state.get(key, {}).items()):
                family.add_metric([value_state], count)
            yield family
        yield GaugeMetricFamily("segnode_disk_free_bytes", "Free space in the spool",
                                value=state.get("disk_free_bytes", 0))
        memories = state.get("device_memory", [])
        used = GaugeMetricFamily("segnode_device_memory_used_bytes",
                                 "Memory held on each inference device (CUDA: reserved by "
                                 "torch; CPU: resident set of the node)", labels=["device"])
        total = GaugeMetricFamily("segnode_device_memory_total_bytes",
                                  "Memory of each inference device (CUDA)", labels=["device"])
        for memory in memories:
            used.add_metric([memory["device"]], memory["used_bytes"])
            if memory["total_bytes"]:
                total.add_metric([memory["device"]], memory["total_bytes"])
        yield used
        yield total
        busy = GaugeMetricFamily("segnode_worker_busy", "1 while a worker runs a job",
                                 labels=["worker", "device"])
        for worker in state.get("workers", []):
            busy.add_metric([worker["worker"], worker["device"]],
                            0 if worker["job"] is None else 1)
        yield busy


class NodeMetrics:
    """The node's counters, histograms and scrape-time gauges."""

    def __init__(self, read_state: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Counter("segnode_instances_received", "Instances stored", registry=r)
        self.bytes = Counter("segnode_received_bytes", "Bytes of instances received",
                             registry=r)
        self.associations = Counter("segnode_associations", "Associations by result",
                                    ["result"], registry=r)
        self.series_completed = Counter("segnode_series_completed",
                                        "Series found complete (quiet time)", registry=r)
        self.jobs_finished = Counter("segnode_jobs_finished", "Jobs finished by state",
                                     ["state"], registry=r)
        self.stage_seconds = Histogram("segnode_stage_seconds", "Duration of each stage",
                                       ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.deliveries = Counter("segnode_deliveries_attempted", "Delivery attempts by result",
                                  ["result"], registry=r)
        self.model_load_seconds = Gauge("segnode_model_load_seconds",
                                        "Time to load each model pack", ["model"], registry=r)
        if read_state is not None:
            r.register(_StateCollector(read_state))

    def association_closed(self, result: str, files: int, failures: int,
                           size_bytes: int) -> None:
        """Count one association and what it stored."""
        self.associations.labels(rejection_kind(result)).inc()
        self.instances.inc(max(0, files - failures))
        self.bytes.inc(size_bytes)

    def job_finished(self, state: str, stages: dict[str, float]) -> None:
        """Count a finished job and observe how long each of its stages took."""
        self.jobs_finished.labels(state).inc()
        for stage, seconds in stages.items():
            if seconds >= 0:
                self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)
