"""Handlers of the node subcommands: serve, status, jobs, outbox, echo, config check.

Each reads ``--config`` (default ``config.yaml`` in the working folder, or
``SEGNODE_CONFIG``), validates it, and works on the node's catalogue; the
commands other than ``serve`` may run while the node serves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from node.catalogue import Catalogue
from node.config import NodeConfig, load_config
from node.jobqueue import Job, SqlJobQueue
from node.outbox import Outbox
from node.spool import free_disk_mb
from segnode_errors import ConfigError

__all__ = ["serve", "worker", "status", "jobs", "outbox", "echo", "config_check", "config_path"]

logger = logging.getLogger("segnode")


def config_path(args: argparse.Namespace) -> Path:
    """``--config``, else ``SEGNODE_CONFIG``, else ``./config.yaml``."""
    if getattr(args, "config", None) is not None:
        return Path(args.config)
    return Path(os.environ.get("SEGNODE_CONFIG", "config.yaml"))


def _load(args: argparse.Namespace) -> NodeConfig:
    return load_config(config_path(args))


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def config_check(args: argparse.Namespace) -> int:
    """``segnode config check [FILE]``: every problem with its key path, exit 2 if any."""
    path = Path(args.file) if args.file else config_path(args)
    config = load_config(path)
    _write(f"{path}: valid ({len(config.callers)} caller(s), {len(config.destinations)} "
           f"destination(s), {len(config.rules)} rule(s); listening as {config.node.ae_title} "
           f"on {config.node.host}:{config.node.port})")
    return 0


def serve(args: argparse.Namespace) -> int:
    """``segnode serve``: run the node until SIGTERM or SIGINT."""
    config = _load(args)  # a bad configuration stops here, before torch is imported
    from node.logs import apply_logging
    from node.service import Node

    apply_logging(config.logging.format, "DEBUG" if args.verbose else config.logging.level)
    roles = getattr(args, "roles", None)
    node = Node(config, roles=frozenset(roles)) if roles else Node(config)

    _stop_on_signals(node.stop_event.set, "stopping")
    node.serve_forever()
    return 0


def _stop_on_signals(stop: Callable[[], object], what: str) -> None:
    """Call ``stop`` on SIGTERM and SIGINT, logging ``what`` happens next."""
    def handler(signum: int, _frame: object) -> None:
        logger.info("signal %d: %s", signum, what)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def worker(args: argparse.Namespace) -> int:
    """``segnode worker``: one worker process on one device (Celery, or the shared queue)."""
    config = _load(args)
    from node.logs import apply_logging
    from node.worker_process import WorkerProcess

    apply_logging(config.logging.format, "DEBUG" if args.verbose else config.logging.level)
    process = WorkerProcess(config, device=args.device, name=args.name, threads=args.threads)

    _stop_on_signals(process.stop, "stopping after the current job")
    process.run()
    return 0


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    return True


def status(args: argparse.Namespace) -> int:
    """``segnode status``: listener, queues, running job, device, disk, last errors."""
    config = _load(args)
    catalogue = Catalogue(config.database_url)
    state = catalogue.get_state()
    queue, box = SqlJobQueue(catalogue), Outbox(catalogue, config.timing.retry)
    heartbeat = float(state.get("heartbeat_at") or 0)
    fresh = time.time() - heartbeat < config.timing.heartbeat_fresh_s
    up = _pid_alive(state.get("pid", "")) and fresh
    listener = state.get("listener", f"{config.node.ae_title}@{config.node.host}:"
                                     f"{config.node.port}")
    _write(f"node:      {'up' if up else 'down'} (pid {state.get('pid') or '-'}, "
           f"heartbeat {_when(heartbeat)})")
    _write(f"listener:  {listener}")
    _write(f"device:    {state.get('device', '-')}")
    counts = queue.counts()
    _write("jobs:      " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    _write("outbox:    " + ", ".join(f"{n} {s}" for s, n in box.counts().items()))
    _write("series:    " + (", ".join(f"{n} {s}" for s, n in
                                     sorted(catalogue.series_counts().items())) or "none"))
    workers = catalogue.workers(fresh_s=config.timing.heartbeat_fresh_s)
    for worker in workers:
        _write(f"worker {worker['worker']}:  {worker['memory'] or worker['device']}; "
               + _running_line(queue, worker["job"]))
    if not workers:
        _write("workers:   none running")
    last = next(iter(queue.list("done", limit=1)), None)
    _write(f"last job:  {_stage_line(last)}" if last else "last job:  none done yet")
    free = free_disk_mb(config.storage.spool_dir)
    _write(f"disk:      {free:.0f} MiB free in {config.storage.spool_dir} "
           f"(minimum {config.storage.min_free_disk_mb} MiB)")
    errors = _last_errors(catalogue, queue, box)
    _write("last errors:" + ("" if errors else " none"))
    for line in errors:
        _write(f"  {line}")
    catalogue.close()
    return 0 if up else 1


def _running_line(queue: SqlJobQueue, job_id: int | None) -> str:
    """``running job 4, series 1.2.3 since 10:00:01`` or ``idle``."""
    job = queue.get(job_id) if job_id is not None else None
    if job is None:
        return "idle"
    return f"running job {job.id}, series {job.series_uid} since {_when(job.started_at)}"


def _stage_line(job: Job) -> str:
    """``job 12 (4.1 s ago): read 0.3 s, segment 9.8 s (network 8.1 s, ...), write 1.2 s``."""
    timings = job.result.get("timings", {})
    stages = [(name, seconds) for name, seconds in timings.items() if "." not in name]
    parts = []
    for name, seconds in stages:
        inner = [(sub.split(".", 1)[1], s) for sub, s in timings.items()
                 if sub.startswith(name + ".")]
        detail = f" ({', '.join(f'{n} {s:.1f} s' for n, s in inner)})" if inner else ""
        parts.append(f"{name} {seconds:.1f} s{detail}")
    return f"job {job.id} ({_when(job.finished_at)}): " + (", ".join(parts) or "no timings")


def _last_errors(catalogue: Catalogue, queue: SqlJobQueue, box: Outbox) -> list[str]:
    found: list[tuple[float, str]] = []
    for job in queue.list("failed", limit=5):
        found.append((job.finished_at or 0, f"{_when(job.finished_at)} job {job.id} failed: "
                                            f"{job.reason}"))
    for delivery in box.list("failed", limit=5):
        found.append((delivery.created_at, f"{_when(delivery.created_at)} delivery "
                                           f"{delivery.id} failed: {delivery.last_error}"))
    for entry in catalogue.list_quarantine(limit=5):
        found.append((entry["received_at"], f"{_when(entry['received_at'])} quarantined "
                                            f"{Path(entry['path']).name}: {entry['reason']}"))
    return [text for _, text in sorted(found, reverse=True)[:8]]


def jobs(args: argparse.Namespace) -> int:
    """``segnode jobs list|show ID|retry ID``."""
    config = _load(args)
    queue = SqlJobQueue(Catalogue(config.database_url))
    if args.jobs_command == "list":
        for job in queue.list(args.state, limit=args.limit):
            more = f" (+{len(job.series_uids) - 1} series)" if len(job.series_uids) > 1 else ""
            _write(f"{job.id:6d} {job.state:8s} {_when(job.created_at)} {job.rule:16s} "
                   f"{job.series_uid}{more} {job.reason}")
        return 0
    job = queue.get(args.id)
    if job is None:
        raise ConfigError(f"No job with id {args.id}.")
    if args.jobs_command == "show":
        deliveries = Outbox(queue.catalogue, config.timing.retry).for_job(job.id)
        document = {**job.__dict__, "deliveries": [
            {"id": d.id, "destination": d.destination, "file": d.path.name, "state": d.state,
             "attempts": d.attempts, "last_error": d.last_error} for d in deliveries]}
        _write(json.dumps(document, indent=2))
        return 0
    if not queue.requeue(job.id):
        _write(f"job {job.id} is {job.state}: only failed or done jobs can be retried")
        return 1
    _write(f"job {job.id} queued again")
    return 0


def outbox(args: argparse.Namespace) -> int:
    """``segnode outbox list [--state S]|retry ID|--all``."""
    config = _load(args)
    box = Outbox(Catalogue(config.database_url), config.timing.retry)
    if args.outbox_command == "list":
        for d in box.list(args.state, limit=args.limit):
            _write(f"{d.id:6d} {d.state:8s} job {d.job_id:<5d} {d.destination:12s} "
                   f"{d.path.name:8s} attempts {d.attempts:<3d} {d.last_error}")
        return 0
    if args.all == (args.id is not None):
        raise ConfigError("outbox retry needs either a delivery ID or --all.")
    count = box.retry(None if args.all else args.id)
    _write(f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again")
    return 0 if count or args.all else 1


def echo(args: argparse.Namespace) -> int:
    """``segnode echo DESTINATION``: C-ECHO a configured destination, result in words."""
    from node.scu import SendFailure
    from node.scu import echo as c_echo

    config = _load(args)
    dest = config.destination(args.destination)
    started = time.monotonic()
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}{', TLS' if dest.tls else ''})"
    try:
        c_echo(dest, config.node)
    except SendFailure as exc:
        _write(f"{where}: C-ECHO failed: {exc}")
        return 1
    _write(f"{where}: C-ECHO succeeded in {1000 * (time.monotonic() - started):.0f} ms")
    return 0
