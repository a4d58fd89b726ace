"""``segnode worker``: one worker on one device, in its own process, on any server.

It opens the shared catalogue (PostgreSQL) and spool, loads the first rule's
model once, and then either consumes ``segnode.run_job`` tasks from the Celery
broker (``queue.backend: celery``; one task at a time, acknowledged after the
job's outputs are in the outbox) or claims jobs from the catalogue's queue
itself (``embedded``). While it runs, its status (device, memory, job) is in
the catalogue under ``worker:<pid>@<host>``, which ``segnode status`` lists.
SIGTERM finishes the current job, then stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from model.device import worker_devices
from node.catalogue import WORKER_STATE_PREFIX, Catalogue
from node.celery_app import QUEUE_NAME, make_app
from node.config import NodeConfig
from node.jobqueue import SqlJobQueue
from node.outbox import Outbox
from node.worker import Worker

__all__ = ["WorkerProcess"]

logger = logging.getLogger(__name__)

class WorkerProcess:
    """One ``segnode worker``.

    Parameters
    ----------
    config
        The node configuration (catalogue, queue, storage, processing).
    device
        ``cpu`` or ``cuda:N``; default the first device of ``processing.device``.
    name
        How status shows it; default ``HOST/DEVICE``.
    threads
        torch CPU threads; default ``processing.cpu_threads``, else every core.
    """

    def __init__(self, config: NodeConfig, *, device: str | None = None,
                 name: str | None = None, threads: int | None = None) -> None:
        self.config = config
        device = worker_devices(device or config.processing.device)[0]
        host = socket.gethostname()
        self.key = f"{WORKER_STATE_PREFIX}{os.getpid()}@{host}"[:64]
        self.catalogue = Catalogue(config.database_url)
        self.queue = SqlJobQueue(self.catalogue,
                                 max_running=config.limits.max_running_jobs)
        self.worker = Worker(config, self.catalogue, self.queue,
                             Outbox(self.catalogue, config.timing.retry), device=device,
                             name=name or f"{host}/{device}",
                             owner=f"{host}:{os.getpid()}:{device}", cpu_threads=threads)
        self._stop = threading.Event()
        self._celery: Any = None

    def run(self) -> None:
        """Load the model, then take jobs until :meth:`stop`."""
        if self.config.rules:
            first = self.config.rules[0]
            self.worker.pipeline(self.worker.settings_for(first.model, first.seg_type,
                                                          first.reports))
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True,
                                     name="segnode-worker-heartbeat")
        heartbeat.start()
        logger.info("segnode worker %s up on %s, queue %s", self.worker.name,
                    self.worker.status()["device"], self.config.queue.backend)
        try:
            if self.config.queue.backend == "celery":
                self._run_celery()
            else:
                self._run_embedded()
        finally:
            self._stop.set()
            heartbeat.join(5)
            self.catalogue.set_state(**{self.key: ""})
            self.catalogue.close()

    def stop(self) -> None:
        """Finish the current job, then return from :meth:`run`."""
        self._stop.set()
        if self._celery is not None:  # (on SIGTERM Celery's own handler does the same)
            self._celery.stop(in_sighandler=True)  # warm shutdown: the current task ends

    def _run_embedded(self) -> None:
        interval = self.config.timing.poll_interval_s
        while not self._stop.is_set():
            try:
                busy = self.worker.run_once()
            except Exception:  # noqa: BLE001 - one bad round never stops the worker
                logger.exception("worker round failed")
                busy = False
            if not busy:
                self._stop.wait(interval)

    def _run_celery(self) -> None:
        app = make_app(self.config.queue, run_job=self.worker.run_job_id)
        self._celery = app.Worker(
            pool="solo", concurrency=1, queues=[QUEUE_NAME], loglevel="INFO",
            hostname=f"segnode-{os.getpid()}@{socket.gethostname()}",
            without_gossip=True, without_mingle=True, optimization="fair")
        self._celery.start()

    def _heartbeat(self) -> None:
        while True:
            state = {**self.worker.status(), "heartbeat_at": time.time()}
            try:
                self.catalogue.set_state(**{self.key: json.dumps(state)})
            except Exception:  # noqa: BLE001 - the database may be back next round
                logger.exception("could not write the worker's heartbeat")
            if self._stop.wait(self.config.timing.poll_interval_s):
                return
