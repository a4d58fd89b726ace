"""``segnode serve``: the listener, assembler, worker and dispatcher in one process.

Start-up order: open the catalogue, queue again the jobs a crash left
running, decide the devices (one worker per entry of ``processing.device``;
``auto`` is one per visible GPU), load the first rule's model on each worker,
then start the listener and the loops. Each loop runs in its own thread and
looks for work every ``timing.poll_interval_s``, and at once when the loop
before it in the chain did some (a job queued wakes every worker, a job
finished wakes the dispatcher); a failure inside one round is logged and the
loop goes on. Workers claim jobs from the one queue, so each job runs once.
SIGTERM or SIGINT stops the node; whatever was running is picked up again at
the next start.

Roles split the same node over processes and servers sharing a PostgreSQL
catalogue and the spool: ``receiver`` (listener, assembler, the corrections
intake, retention, the lease check that queues again the jobs of dead workers, and with
``queue.backend: celery`` the publisher), ``dispatcher``, ``worker`` (the
in-process workers of the embedded queue; Celery workers are ``segnode
worker`` processes) and ``web``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.device import worker_devices
from model.store import ModelStore
from node.assembler import Assembler
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.corrections import CorrectionIntake
from node.dispatcher import Dispatcher
from node.jobqueue import SqlJobQueue
from node.listener import AssociationRecord, Listener
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.publisher import Publisher
from node.receiver import Receiver
from node.retention import Retention
from node.spool import Quarantine, Spool, free_disk_mb
from node.web.server import WebServer
from node.worker import Worker
from segnode_errors import ConfigError

__all__ = ["Node"]

logger = logging.getLogger(__name__)

_RETENTION_INTERVAL_S = 3600.0


@dataclass
class Node:
    """The whole node, built from a validated configuration."""

    config: NodeConfig
    stop_event: threading.Event = field(default_factory=threading.Event)
    #: The parts this process runs (default: all of them).
    roles: frozenset[str] = frozenset(("receiver", "dispatcher", "worker", "web"))

    def __post_init__(self) -> None:
        celery = self.config.queue.backend == "celery"
        if celery and "worker" in self.roles and len(self.roles) == 1:
            raise ConfigError("with queue.backend celery the workers are `segnode worker` "
                              "processes, not `segnode serve --role worker`")
        if celery:
            self.roles = self.roles - {"worker"}
        storage = self.config.storage
        self.catalogue = Catalogue(self.config.database_url)
        self.spool = Spool(storage.spool_dir)
        self.quarantine = Quarantine(storage.quarantine_dir)
        self.queue = SqlJobQueue(self.catalogue,
                                 max_running=self.config.limits.max_running_jobs)
        self.outbox = Outbox(self.catalogue, self.config.timing.retry)
        receiver = Receiver(self.spool, self.quarantine, self.catalogue,
                            self.config.timing.reprocess_late_instances, self.config.limits)
        self.metrics = NodeMetrics(self._gauges)
        self.listener = Listener(self.config, receiver, on_closed=self._association_closed)
        self.assembler = Assembler(self.config, self.catalogue, self.queue, self.metrics)
        devices = worker_devices(self.config.processing.device) if "worker" in self.roles else ()
        cpu_workers = devices.count("cpu")
        # CPU workers of one process share its cores; torch's threads are per process.
        cpu_threads = self.config.processing.cpu_threads or (
            max(1, len(os.sched_getaffinity(0)) // cpu_workers) if cpu_workers > 1 else None)
        self.workers = [
            Worker(self.config, self.catalogue, self.queue, self.outbox, self.metrics,
                   device=device, name=str(number), cpu_threads=cpu_threads)
            for number, device in enumerate(devices, 1)
        ]
        self.publisher = Publisher(self.config.queue, self.queue) if (
            celery and "receiver" in self.roles) else None
        self.dispatcher = Dispatcher(self.config, self.outbox, self.metrics)
        self.web: WebServer | None = None
        self._started_at = time.time()
        self.retention = Retention(self.config, self.catalogue, self.spool)
        self.corrections = CorrectionIntake(self.config, self.catalogue, self.quarantine)
        self._threads: list[threading.Thread] = []
        self._wakes: list[threading.Event] = []

    def start(self) -> None:
        """Recover, load the first model on every worker, start listening and the loops."""
        store = ModelStore(self.config.storage.models_dir)
        for rule in self.config.rules:
            for name in rule.model or (None,):
                store.resolve(name)
        if not self.catalogue.shared:  # SQLite: this process is the only one
            self.corrections.recover()
            requeued = self.queue.requeue_interrupted()
            if requeued:
                logger.warning("jobs %s were interrupted and are queued again",
                               ", ".join(map(str, requeued)))
        if self.config.rules:
            first = self.config.rules[0]
            for worker in self.workers:
                worker.pipeline(worker.settings_for(first.model, first.seg_type, first.reports))
        device = (", ".join(worker.status()["device"] for worker in self.workers)
                  or "none here (segnode worker processes)")
        receiver = "receiver" in self.roles
        if receiver:
            self.listener.start()
        if self.config.web.enabled and "web" in self.roles:
            self.web = WebServer(self._web_app(), self.config.web.host, self.config.web.port)
            self.web.start()
        if receiver:
            self.catalogue.set_state(pid=str(os.getpid()), started_at=f"{time.time():.3f}",
                                     listener=self.listener.describe(), device=device,
                                     heartbeat_at=f"{time.time():.3f}",
                                     workers=self._workers_state())
        interval = self.config.timing.poll_interval_s
        dispatcher = ([self._loop("dispatcher", self.dispatcher.run_once, interval)]
                      if "dispatcher" in self.roles else [])
        workers = [self._loop(f"worker-{worker.name}", worker.run_once, interval,
                              then=dispatcher) for worker in self.workers]
        if receiver:
            if self.publisher is not None:
                workers = [self._loop("publisher", self.publisher.run_once, interval)]
            corrections = self._loop("corrections", self.corrections.run_once, interval)
            self._loop("assembler", self.assembler.run_once, interval,
                       then=[*workers, corrections])
            self._loop("retention", self.retention.run_once, _RETENTION_INTERVAL_S)
            self._loop("leases", self._requeue_expired, interval, then=workers)
            self._loop("heartbeat", self._heartbeat, interval)
        logger.info("segnode node up: roles %s, %d worker(s) on %s, %d rule(s), %d "
                    "destination(s)", ", ".join(sorted(self.roles)), len(self.workers),
                    device, len(self.config.rules), len(self.config.destinations))

    def _requeue_expired(self) -> bool:
        requeued = self.queue.requeue_expired()
        if requeued:
            logger.warning("jobs %s: their workers stopped renewing the lease; queued again",
                           ", ".join(map(str, requeued)))
        return bool(requeued)

    def _association_closed(self, record: AssociationRecord, seconds: float) -> None:
        self.catalogue.record_association(
            started_at=record.started_at, calling_ae=record.calling_ae, address=record.address,
            files=record.files, failures=record.failures, size_bytes=record.bytes,
            seconds=seconds, result=record.result)
        self.metrics.association_closed(record.result, record.files, record.failures,
                                        record.bytes)

    def _gauges(self) -> dict[str, Any]:
        """State read at each scrape of /metrics."""
        gauges: dict[str, Any] = {
            "jobs": self.queue.counts(), "outbox": self.outbox.counts(),
            "series": self.catalogue.series_counts(),
            "disk_free_bytes": free_disk_mb(self.config.storage.spool_dir) * 2**20,
        }
        memories = {}
        for worker in self.workers:
            memory = worker.device_memory()
            if memory is not None:  # two workers on one device share its memory
                memories[memory["device"]] = memory
        gauges["device_memory"] = list(memories.values())
        gauges["workers"] = [worker.status() for worker in self.workers]
        return gauges

    def readiness(self) -> dict[str, bool]:
        """The checks of /readyz."""
        try:
            self.catalogue.set_state(ready_check_at=f"{time.time():.3f}")
            writable = True
        except Exception:  # noqa: BLE001 - any database failure means not ready
            writable = False
        free = free_disk_mb(self.config.storage.spool_dir)
        return {
            "listener_accepting": self.listener.accepting or "receiver" not in self.roles,
            "database_writable": writable,
            "model_loaded": all(w.model_loaded for w in self.workers) or not self.config.rules,
            "disk_above_threshold": free >= self.config.storage.min_free_disk_mb,
        }

    def _web_app(self) -> Any:
        from node.web.app import create_app
        from node.web.data import WebContext

        store = ModelStore(self.config.storage.models_dir)
        ctx = WebContext(self.config, self.catalogue, self.queue, self.outbox, self._started_at)
        return create_app(ctx, self.metrics, readiness=self.readiness,
                          models=lambda: [pack.info() for pack in store.list()])

    def _workers_state(self) -> str:
        return json.dumps([worker.status() for worker in self.workers])

    def _heartbeat(self) -> bool:
        self.catalogue.set_state(heartbeat_at=f"{time.time():.3f}",
                                 workers=self._workers_state())
        return False

    def _loop(self, name: str, work: Callable[[], object], interval: float,
              then: Sequence[threading.Event] = ()) -> threading.Event:
        """Run ``work`` in a thread until stopped; returns the event that wakes it early.

        After a round that did something the loop goes again at once and sets
        ``then`` (the next loops' wake events); after an idle round it waits
        ``interval`` or until woken.
        """
        wake = threading.Event()
        self._wakes.append(wake)

        def run() -> None:
            while not self.stop_event.is_set():
                wake.clear()
                try:
                    busy = bool(work())
                except Exception:  # noqa: BLE001 - a loop never dies of one bad round
                    logger.exception("%s: round failed", name)
                    busy = False
                if busy:
                    for event in then:
                        event.set()
                if not busy:
                    wake.wait(interval)

        thread = threading.Thread(target=run, name=f"segnode-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return wake

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening and let the loops finish their current round."""
        self.stop_event.set()
        for wake in self._wakes:
            wake.set()
        if self.web is not None:
            self.web.stop()
        if "receiver" in self.roles:
            self.listener.stop()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if "receiver" in self.roles:
            self.catalogue.set_state(pid="", workers="[]")
        if self.publisher is not None:
            self.publisher.close()
        self.catalogue.close()

    def serve_forever(self) -> None:
        """Start, then block until :attr:`stop_event` is set (by a signal handler)."""
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()
