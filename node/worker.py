"""A worker: runs queued jobs through the same pipeline as ``segnode segment``.

A node has one worker per device (``processing.device``), each with its own
warm models, claiming jobs from the shared queue. Each job reads its series
from the spool, segments it with the rule's model (loaded once per model and
kept), writes the outputs under ``storage.output_dir/job-<id>/<key>/`` and
queues every SEG and SR for each of the rule's destinations in the outbox.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from dicom_io.scan import SeriesFiles
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.device_memory import DeviceMemory, device_memory
from node.jobqueue import Job, SqlJobQueue
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.pipeline import Pipeline, VolumeResult, sum_timings
from node.runner import run_series_set
from node.settings import RunSettings
from segnode_errors import SegnodeError

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


class Worker:
    """Claims jobs one at a time and runs them on one device.

    Parameters
    ----------
    config
        Processing settings (folds, tile step, precision), storage paths.
    catalogue, queue, outbox
        Where series files are found, jobs come from and deliveries go.
    device
        Where this worker's networks run (``cpu``, ``cuda:1``).
    name
        How status, logs and metrics tell this worker from the others.
    owner
        The name its job leases carry, unique among all workers sharing the
        catalogue (default: host, process id and ``name``).
    cpu_threads
        torch threads on the CPU (default ``processing.cpu_threads``, else
        every core of the process).
    """

    def __init__(self, config: NodeConfig, catalogue: Catalogue, queue: SqlJobQueue,
                 outbox: Outbox, metrics: NodeMetrics | None = None, *,
                 device: str, name: str = "1", owner: str | None = None,
                 cpu_threads: int | None = None) -> None:
        self.device = device
        self.cpu_threads = cpu_threads or config.processing.cpu_threads
        self.name = name
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.lease_s = config.queue.lease_s
        self.config = config
        self.metrics = metrics
        self.catalogue = catalogue
        self.queue = queue
        self.outbox = outbox
        self._pipelines: dict[RunSettings, Pipeline] = {}
        self.current_job: int | None = None
        #: Seconds per pipeline stage of the last finished job, summed over its volumes.
        self.last_timings: dict[str, float] = {}

    def settings_for(self, models: tuple[str, ...], seg_type: str,
                     reports: tuple[str, ...] = ()) -> RunSettings:
        """The run settings of a rule's packs and reports on this worker's device."""
        processing = self.config.processing
        return RunSettings.build(
            models=models, reports=reports, disclaimer=self.config.reports.disclaimer,
            models_dir=self.config.storage.models_dir, device=self.device,
            seg_type=seg_type, folds=processing.folds, tile_step_size=processing.tile_step_size,
            precision=processing.precision, compile=processing.compile,
            threads=self.cpu_threads,
            max_volume_megavoxels=self.config.limits.max_volume_megavoxels,
            stations=self.config.stations,
        )

    def pipeline(self, settings: RunSettings) -> Pipeline:
        """The pipeline for ``settings``, loading its model the first time only."""
        if settings not in self._pipelines:
            self._pipelines[settings] = Pipeline(settings)
            loaded = self._pipelines[settings]
            if self.metrics is not None:
                for engine in loaded.engines:
                    self.metrics.model_load_seconds.labels(engine.pack.name).set(
                        engine.describe()["load_s"])
            logger.info("worker %s: model(s) %s loaded (%s)", self.name, ", ".join(
                f"{p.name} {p.version}" for p in loaded.packs), loaded.device)
        return self._pipelines[settings]

    @property
    def model_loaded(self) -> bool:
        """True once a pipeline (and its models) is loaded."""
        return bool(self._pipelines)

    def device_type(self) -> str:
        """``cuda`` or ``cpu`` of the loaded models; ``none`` before any is loaded."""
        for pipeline in self._pipelines.values():
            return pipeline.engines[0].device.type
        return "none"

    def device_memory(self) -> DeviceMemory | None:
        """Memory of the device the loaded models run on; None before any is loaded."""
        pipeline = next(iter(self._pipelines.values()), None)
        if pipeline is None:
            return None
        device = pipeline.engines[0].device
        return device_memory(device.type, device.index or 0)

    def status(self) -> dict[str, Any]:
        """``{"worker", "device", "job", "memory"}``: what ``segnode status`` shows of it."""
        pipeline = next(iter(self._pipelines.values()), None)
        memory = self.device_memory()
        return {"worker": self.name,
                "device": pipeline.device if pipeline is not None else self.device,
                "job": self.current_job, "memory": memory.describe() if memory else ""}

    def run_once(self) -> bool:
        """Run the most urgent, oldest queued job; False when there was none."""
        job = self.queue.claim(self.owner, self.lease_s)
        if job is None:
            return False
        self._run_claimed(job)
        return True

    def run_job_id(self, job_id: int) -> bool:
        """Run job ``job_id`` (a Celery task names it); False when it is not queued.

        A job already running elsewhere, done or failed is left alone: the
        message was a duplicate (a republication, a broker redelivery).
        """
        job = self.queue.claim_job(job_id, self.owner, self.lease_s)
        if job is None:
            logger.info("job %d is not queued (taken, done or failed): nothing to run", job_id)
            return False
        self._run_claimed(job)
        return True

    def _run_claimed(self, job: Job) -> None:
        self.current_job = job.id
        started = time.time()
        self.last_timings = {}
        try:
            with _Lease(self.queue, job.id, self.owner, self.lease_s):
                self.run(job)
        finally:
            self.current_job = None
        if self.metrics is not None:
            finished = self.queue.get(job.id)
            received = [self.catalogue.series_received(uid) for uid in job.series_uids]
            last = max((r[1] for r in received if r is not None), default=job.created_at)
            self.metrics.job_finished(finished.state if finished else "unknown", {
                "wait_in_queue": started - job.created_at,
                "complete_to_done": time.time() - last,
                "process": time.time() - started,
                **self.last_timings,
            })

    def run(self, job: Job) -> None:
        """Run one claimed job to done or failed; never raises."""
        logger.info("job %d: %d series from %s, rule %s (attempt %d), worker %s", job.id,
                    len(job.series_uids), job.series_uid, job.rule, job.attempts, self.name,
                    extra={"job_id": job.id})
        out_root = Path(self.config.storage.output_dir) / f"job-{job.id}"
        self.queue.set_output_dir(job.id, str(out_root))
        series = [SeriesFiles(uid, tuple(self.catalogue.series_paths(uid)))
                  for uid in job.series_uids]
        series = [files for files in series if files.paths]
        if not series:
            self.queue.fail(job.id, "no instances of the job's series are in the spool")
            return
        try:
            models = tuple(job.model.split(",")) if job.model else ()
            rule = next((r for r in self.config.rules if r.name == job.rule), None)
            pipeline = self.pipeline(self.settings_for(models, job.seg_type,
                                                       rule.reports if rule else ()))
            results = run_series_set(pipeline, series, out_root, live=False)
        except SegnodeError as exc:
            self.queue.fail(job.id, str(exc))
            logger.error("job %d failed: %s", job.id, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one bad job never stops the worker
            logger.exception("job %d failed with an internal error", job.id)
            self.queue.fail(job.id, f"internal error: {type(exc).__name__}: {exc}")
            return
        self._finish(job, results)

    def _finish(self, job: Job, results: list[VolumeResult]) -> None:
        produced = [r for r in results if r.status in ("done", "skipped")]
        outputs = [path for r in produced if r.folder is not None
                   for path in sorted(r.folder.glob("*.dcm"))]
        written = []
        for path in outputs:
            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["SOPInstanceUID", "SeriesInstanceUID"])
            sop_uid = str(header.SOPInstanceUID)
            written.append((sop_uid, str(header.SeriesInstanceUID), path))
            for destination in job.destinations:
                self.outbox.add(job.id, destination, path, sop_uid)
        self.catalogue.record_outputs(job.id, written)
        self.last_timings = sum_timings(results)
        summary: dict[str, Any] = {
            "volumes": [{"key": r.key, "status": r.status, "reason": r.reason,
                         "folder": str(r.folder) if r.folder else None,
                         "structures": len(r.structures), "timings": r.timings}
                        for r in results],
            "outputs": [str(p) for p in outputs],
            "timings": self.last_timings,
            "worker": self.name, "device": self.status()["device"],
        }
        problems = "; ".join(f"{r.key}: {r.reason}" for r in results if r.status == "failed")
        if produced or not problems:
            notes = problems or "; ".join(r.reason for r in results if r.status == "ignored")
            self.queue.complete(job.id, summary, notes)
            logger.info("job %d done: %d volume(s), %d output file(s) for %s", job.id,
                        len(produced), len(outputs), ", ".join(job.destinations) or "no one",
                        extra={"job_id": job.id})
        else:
            self.queue.fail(job.id, problems, summary)
            logger.error("job %d failed: %s", job.id, problems, extra={"job_id": job.id})


class _Lease:
    """Renews a job's lease every third of ``lease_s`` while the block runs."""

    def __init__(self, queue: SqlJobQueue, job_id: int, owner: str, lease_s: float) -> None:
        self._queue, self._job_id, self._owner, self._lease_s = queue, job_id, owner, lease_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"segnode-lease-{job_id}")

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(self._lease_s / 3):
            try:
                if not self._queue.renew(self._job_id, self._owner, self._lease_s):
                    logger.warning("job %d: lease lost (queued again after a stall?)",
                                   self._job_id)
                    return
            except Exception:  # noqa: BLE001 - a database hiccup; the next round retries
                logger.exception("job %d: could not renew the lease", self._job_id)
