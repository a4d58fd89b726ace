"""Scale-out: series per hour with 1 and 2 Celery workers, and queue latency under a burst.

What is measured
----------------
A throwaway PostgreSQL cluster, Redis, ``segnode serve --role receiver``
(series rule, no destinations, quiet time 1 s) and K ``segnode worker
--device cpu`` processes (the built-in demo model) run on this machine's
127.0.0.1, as ``deploy/compose.yaml`` runs them in containers. Once every
worker has loaded its model, DCMTK ``storescu`` sends N phantom MR series
(body-sized, 8 x 4 x 4 mm, as the node tests use) back to back, one
association each: the burst. From the catalogue's job rows:

- ``created``: the series was found complete (its quiet time after its last
  instance) and its job queued;
- ``started``: a worker claimed the job; ``finished``: its outputs were written.

Series per hour is N / (last finished - first created) x 3600. The queue
latency is started - created per job (median, 95th percentile, maximum).
K = 1, then 2, on fresh servers; the table puts them side by side. Each
worker gets cores / K torch threads (``--threads``), as a site running CPU
workers side by side should set them. On a 2-core machine the two workers
and the receiver share the same cores, so the second worker buys less than
it would on a second GPU.

Usage (about 5 minutes on 2 cores): ``.venv/bin/python bench/scale_out.py
[--series N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import BenchError  # noqa: E402
from node.catalogue import Catalogue  # noqa: E402
from node.jobqueue import Job, SqlJobQueue  # noqa: E402
from tests.peers import dcmtk_available, free_local_port, poll_until, stop_process  # noqa: E402
from tests.servers import (  # noqa: E402
    PostgreSQL,
    Redis,
    postgresql_available,
    redis_available,
)


def write_burst(root: Path, count: int) -> list[Path]:
    """``count`` phantom MR series, one folder each."""
    from dicom_io.phantom_series import write_series
    from model.phantom import Phantom, make_grid

    folders = []
    for index in range(count):
        grid = make_grid("axial", (8.0, 4.0, 4.0))
        image, _ = Phantom(seed=index, jitter=0.5).sample(grid, modality="MR")
        folder = root / f"series{index:03d}"
        write_series(image, folder, modality="MR", uid_seed=f"bench-scale-{index}",
                     series_description=f"scale {index}")
        folders.append(folder)
    return folders


def _config(root: Path, port: int, postgres: PostgreSQL, redis: Redis) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": port},
        "callers": [{"ae_title": "STORESCU", "addresses": ["127.0.0.1"]}],
        "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "whole_study": False}],
        "timing": {"series_quiet_s": 1, "poll_interval_s": 0.2},
        "storage": {"min_free_disk_mb": 0, "spool_dir": str(root / "spool"),
                    "output_dir": str(root / "outputs"),
                    "quarantine_dir": str(root / "quarantine"), "models_dir": str(root / "m")},
        "database": {"url": postgres.url},
        "queue": {"backend": "celery", "broker_url": redis.url},
        "processing": {"device": "cpu"},
        "web": {"enabled": False},
    }))
    return path


def _segnode(root: Path, config: Path, name: str, *args: str) -> subprocess.Popen:
    log = (root / f"{name}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "node.cli", *args, "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_case(workers: int, folders: list[Path], work: Path) -> dict:
    """One burst through a fresh receiver and ``workers`` worker processes."""
    root = Path(tempfile.mkdtemp(prefix=f"k{workers}-", dir=work))
    postgres, redis = PostgreSQL().start(), Redis().start()
    procs: list[subprocess.Popen] = []
    catalogue = None
    try:
        port = free_local_port()
        config = _config(root, port, postgres, redis)
        procs.append(_segnode(root, config, "receiver", "serve", "--role", "receiver"))
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))  # cores shared out
        procs += [_segnode(root, config, f"w{n}", "worker", "--device", "cpu", "--name", f"w{n}",
                           "--threads", threads) for n in range(1, workers + 1)]
        catalogue = Catalogue(postgres.socket_url)
        ready = poll_until(lambda: len(catalogue.worker_processes(fresh_s=30)) == workers,
                           timeout=300, interval=0.5)
        if not ready or not poll_until(lambda: _listening(port), timeout=300, interval=0.5):
            raise BenchError(f"the receiver or {workers} worker(s) did not come up; see {root}")
        for folder in folders:
            sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "SEGNODE", "+sd",
                                   "+r", "127.0.0.1", str(port), str(folder)],
                                  env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
                                  text=True, timeout=120, check=False)
            if sent.returncode != 0:
                raise BenchError(f"storescu failed: {sent.stderr[-500:]}")
        queue = SqlJobQueue(catalogue)

        def finished() -> list[Job] | None:
            jobs = queue.list(limit=10 * len(folders))
            done = [j for j in jobs if j.state in ("done", "failed")]
            return done if len(done) == len(folders) else None

        jobs = poll_until(finished, timeout=3600, interval=1.0)
        if not jobs:
            raise BenchError(f"the burst did not finish: {queue.counts()}; see {root}")
        if any(job.state != "done" for job in jobs):
            raise BenchError(f"failed jobs: {[j.reason for j in jobs if j.state != 'done']}")
        first = min(job.created_at for job in jobs)
        last = max(job.finished_at or 0 for job in jobs)
        latency = [(job.started_at or 0) - job.created_at for job in jobs]
        return {"workers": workers, "series": len(jobs),
                "series_per_hour": len(jobs) / (last - first) * 3600,
                "latency_median_s": statistics.median(latency),
                "latency_p95_s": _percentile(latency, 0.95), "latency_max_s": max(latency),
                "by_worker": {w: sum(j.result.get("worker") == w for j in jobs)
                              for w in sorted({j.result.get("worker", "") for j in jobs})}}
    finally:
        for proc in procs:
            stop_process(proc, timeout=30)
        if catalogue is not None:
            catalogue.close()
        redis.close()
        postgres.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=50, help="series in the burst")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    reason = postgresql_available() or redis_available() or dcmtk_available("storescu")
    if reason:
        print(f"scale-out benchmark cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="segnode-bench-scale-") as tmp:
        work = Path(tmp)
        folders = write_burst(work / "data", args.series)
        cases = [run_case(workers, folders, work) for workers in (1, 2)]
    one, two = cases
    print(f"{'':34s}{'1 worker':>12s}{'2 workers':>12s}{'2 / 1':>8s}")
    for label, key in (("series per hour", "series_per_hour"),
                       ("queue latency median s", "latency_median_s"),
                       ("queue latency p95 s", "latency_p95_s"),
                       ("queue latency max s", "latency_max_s")):
        print(f"{label:34s}{one[key]:12.1f}{two[key]:12.1f}{two[key] / one[key]:8.2f}")
    print(f"jobs per worker: {one['by_worker']} / {two['by_worker']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
