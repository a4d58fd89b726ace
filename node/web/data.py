"""What the dashboard and the JSON API show, read from the catalogue, queue and outbox.

Every function returns plain JSON-serialisable data; the pages render the
same documents the API returns. The catalogue holds no patient data; the
accession number (and, only where ``web.show_patient_names`` allows it, the
patient's name and ID) are read from the first spooled instance of a job's
series when a job is shown.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from node.catalogue import Catalogue
from node.config import NodeConfig
from node.jobqueue import Job, SqlJobQueue
from node.outbox import Delivery, Outbox
from node.outputs import TABLE_COLUMNS
from node.spool import free_disk_mb

__all__ = ["WebContext", "job_detail", "job_summary", "overview", "redacted_config",
           "volumes_export"]

_SECRET_KEYS = {"token", "private_key", "url", "broker_url"}


@dataclass
class WebContext:
    """What the web layer reads from and acts on."""

    config: NodeConfig
    catalogue: Catalogue
    queue: SqlJobQueue
    outbox: Outbox
    started_at: float


def overview(ctx: WebContext) -> dict[str, Any]:
    """Listener, device, disk, queue depths and the last hour's throughput."""
    state = ctx.catalogue.get_state()
    node = ctx.config.node
    hour_ago = time.time() - 3600
    instances, size = ctx.catalogue.received_since(hour_ago)
    jobs_hour = [j for j in ctx.queue.list(limit=1000) if (j.finished_at or 0) >= hour_ago]
    return {
        "ae_title": node.ae_title,
        "listener": state.get("listener", f"{node.ae_title}@{node.host}:{node.port}"),
        "port": node.port,
        "tls_port": node.tls.port if node.tls else None,
        "listener_up": bool(state.get("pid")),
        "device": state.get("device", "-"),
        "workers": ctx.catalogue.workers(fresh_s=ctx.config.timing.heartbeat_fresh_s),
        "uptime_s": round(time.time() - ctx.started_at, 1),
        "disk_free_mb": round(free_disk_mb(ctx.config.storage.spool_dir), 1),
        "min_free_disk_mb": ctx.config.storage.min_free_disk_mb,
        "jobs": ctx.queue.counts(),
        "deliveries": ctx.outbox.counts(),
        "series": ctx.catalogue.series_counts(),
        "last_hour": {"instances": instances, "megabytes": round(size / 1e6, 2),
                      "jobs_done": sum(j.state == "done" for j in jobs_hour),
                      "jobs_failed": sum(j.state == "failed" for j in jobs_hour)},
    }


def job_summary(job: Job) -> dict[str, Any]:
    """One row of the jobs list."""
    return {
        "id": job.id, "state": job.state, "rule": job.rule,
        "models": job.model.split(",") if job.model else ["demo"],
        "study_uid": job.study_uid, "series_uids": list(job.series_uids),
        "attempts": job.attempts, "reason": job.reason,
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at,
        "seconds": round(job.finished_at - job.started_at, 2)
        if job.finished_at and job.started_at else None,
    }


def _delivery(d: Delivery) -> dict[str, Any]:
    row = asdict(d)
    row["file"] = d.path.name
    del row["path"]
    return row


def _stages(ctx: WebContext, job: Job, deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """Received, complete, segmented, written, delivered: when each was reached."""
    received = [ctx.catalogue.series_received(uid) for uid in job.series_uids]
    received = [r for r in received if r is not None]
    delivered = [d.delivered_at for d in deliveries if d.delivered_at]
    all_delivered = bool(deliveries) and len(delivered) == len(deliveries)
    return [
        {"stage": "received", "at": max((r[1] for r in received), default=None),
         "since": min((r[0] for r in received), default=None)},
        {"stage": "complete", "at": job.created_at},
        {"stage": "segmented", "at": job.started_at},
        {"stage": "written", "at": job.finished_at if job.state == "done" else None},
        {"stage": "delivered", "at": max(delivered) if all_delivered else None},
    ]


def _header(ctx: WebContext, job: Job) -> dict[str, str]:
    paths = ctx.catalogue.series_paths(job.series_uid)
    if not paths:
        return {}
    try:
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return {}
    found = {"accession_number": str(ds.get("AccessionNumber", "")),
             "study_date": str(ds.get("StudyDate", "")),
             "modality": str(ds.get("Modality", "")),
             "series_description": _shown(ds.get("SeriesDescription", ""))}
    if ctx.config.web.show_patient_names:
        found["patient_name"] = str(ds.get("PatientName", ""))
        found["patient_id"] = str(ds.get("PatientID", ""))
    return found


def _shown(value: object, limit: int = 128) -> str:
    """A peer's free text as shown: at most ``limit`` characters (escaped by the templates)."""
    text = str(value or "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def studies(ctx: WebContext, limit: int = 100) -> list[dict[str, Any]]:
    """Recent studies (:meth:`Catalogue.list_studies`), each series with its description."""
    found = ctx.catalogue.list_studies(limit=limit)
    for study in found:
        for entry in study["series"]:
            row = ctx.catalogue.get_series(entry["series_uid"]) or {}
            entry["description"] = _shown(row.get("description", ""))
    return found


def job_folders(job: Job) -> list[Path]:
    """The output folders a finished job wrote (one per volume)."""
    return [Path(v["folder"]) for v in job.result.get("volumes", []) if v.get("folder")]


def job_detail(ctx: WebContext, job: Job) -> dict[str, Any]:
    """A job with its stages, deliveries, volumes (tables and previews) and header facts."""
    deliveries = ctx.outbox.for_job(job.id)
    volumes = []
    for folder in job_folders(job):
        table = folder / "volumes.json"
        document = json.loads(table.read_text()) if table.is_file() else {}
        volumes.append({
            "key": folder.name,
            "structures": document.get("structures", []),
            "qc_flags": document.get("qc_flags", []),
            "skipped_models": document.get("skipped_models", []),
            "previews": sorted(p.name for p in folder.glob("preview*.png")),
        })
    return {**job_summary(job), "destinations": list(job.destinations),
            "stages": _stages(ctx, job, deliveries),
            "deliveries": [_delivery(d) for d in deliveries],
            "volumes": volumes, "header": _header(ctx, job)}


def failures(ctx: WebContext) -> dict[str, Any]:
    """Failed jobs, failed deliveries and quarantined files, with their reasons."""
    return {
        "jobs": [job_summary(j) for j in ctx.queue.list("failed", limit=100)],
        "deliveries": [_delivery(d) for d in ctx.outbox.list("failed", limit=100)],
        "quarantine": [{"id": q["id"], "file": Path(q["path"]).name, "reason": q["reason"],
                        "calling_ae": q["calling_ae"], "received_at": q["received_at"]}
                       for q in ctx.catalogue.list_quarantine(limit=100)],
    }


def redacted_config(config: NodeConfig) -> dict[str, Any]:
    """The effective configuration with secrets (token, keys, database URL) hidden."""
    def hide(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***" if k in _SECRET_KEYS and v else hide(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [hide(v) for v in value]
        return value
    return hide(config.model_dump(mode="json"))


def volumes_export(ctx: WebContext, jobs: list[Job]) -> str:
    """The volume tables of ``jobs`` as one CSV (research export), job and series first."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("job_id", "study_uid", "series", *TABLE_COLUMNS),
                            extrasaction="ignore")
    writer.writeheader()
    for job in jobs:
        for folder in job_folders(job):
            table = folder / "volumes.json"
            if not table.is_file():
                continue
            for row in json.loads(table.read_text()).get("structures", []):
                writer.writerow({"job_id": job.id, "study_uid": job.study_uid,
                                 "series": folder.name, **row})
    return buffer.getvalue()
