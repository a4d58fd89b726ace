"""One node in two shapes, the same tests: several processes, and one process.

``celery``: PostgreSQL (a throwaway cluster), Redis (no persistence),
``segnode serve --role receiver --role dispatcher`` and two ``segnode worker``
processes sharing the spool and output folders. ``sqlite``: one ``segnode
serve`` on the embedded SQLite catalogue and queue, with two in-process
workers (``processing.device: [cpu, cpu]``). Both send to Orthanc, all in one
private network namespace; phantom series go in with DCMTK ``storescu``. The
test reads the catalogue itself (PostgreSQL over its Unix socket).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml

from node.catalogue import Catalogue
from node.jobqueue import Job, SqlJobQueue
from tests.node.test_node_e2e import Series, write_phantom
from tests.peers import (
    NetNamespace,
    Orthanc,
    dcmtk_available,
    netns_available,
    orthanc_available,
    poll_until,
    stop_process,
    storescu,
)
from tests.servers import PostgreSQL, Redis, postgresql_available, redis_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

_REASON_SINGLE = netns_available() or orthanc_available() or dcmtk_available("storescu")
_REASON = _REASON_SINGLE or postgresql_available() or redis_available()


@dataclass
class Cluster:
    """The servers and node processes of one test module."""

    topology: str
    ns: NetNamespace
    root: Path
    orthanc: Orthanc
    postgres: PostgreSQL | None
    redis: Redis | None
    port: int
    config_path: Path
    catalogue: Catalogue
    queue: SqlJobQueue
    receiver: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] | None = None

    def start_process(self, name: str, *args: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with (self.root / f"{name}.log").open("ab") as log:
            return self.ns.popen([sys.executable, "-m", "node.cli", *args, "--config",
                                  str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                 env=env, cwd=REPO)

    def start_worker(self, name: str) -> None:
        assert self.workers is not None
        if self.topology == "sqlite":  # the node itself, with its in-process workers
            self.workers[name] = self.start_process(name, "serve")
            self.ns.wait_listening([self.port], timeout=180, process=self.workers[name])
        else:
            self.workers[name] = self.start_process(name, "worker", "--device", "cpu",
                                                    "--name", name, "--threads", "1")

    def log(self, name: str) -> str:
        return self.log_text(name)[-3000:]

    def log_text(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def send(self, series: Series) -> None:
        result = storescu(series.folder, "127.0.0.1", self.port, called_aet="SEGNODE",
                          netns=self.ns)
        assert result.returncode == 0, result.stdout + result.stderr

    def jobs_of(self, series: Series) -> list[Job]:
        """Every job of the series (more than one if it was found complete too early)."""
        return [job for job in self.queue.list(limit=1000) if job.series_uid == series.series_uid]

    def wait_done(self, batch: list[Series], timeout: float) -> list[Job]:
        """Every series of ``batch`` has one job, done, and its SEG and SR are in Orthanc."""
        def finished() -> list[Job] | None:
            jobs = [job for s in batch for job in self.jobs_of(s)]
            assert len(jobs) <= len(batch), f"a series was found complete twice: {jobs}"
            if len(jobs) == len(batch) and all(job.state == "done" for job in jobs):
                sent = {uid for job in jobs for uid in _outputs(job)}
                if sent <= self.orthanc.sop_instance_uids():
                    return jobs
            return None

        jobs = poll_until(finished, timeout=timeout, interval=0.5)
        assert jobs, (self.queue.counts(), *(self.log(name)[-1500:] for name in self.logs))
        return jobs

    @property
    def logs(self) -> list[str]:
        return sorted(path.stem for path in self.root.glob("*.log"))

    def worker_names(self) -> set[str]:
        """What job results name their workers by."""
        return {"1", "2"} if self.topology == "sqlite" else {"w1", "w2"}


#: Identifying data of the phantoms, which no log line may contain.
PATIENT = {"patient_name": "Doe^Janet^Q", "patient_id": "PID-4471-Q",
           "patient_birth_date": "19570412"}


def write_small_phantom(root: Path, name: str) -> Series:
    """An abdomen-sized MR phantom (one network patch of the demo model: quick to segment)."""
    return write_phantom(root, name, fov_mm=(192.0, 256.0, 256.0), **PATIENT)


def _outputs(job: Job) -> list[str]:
    return [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in job.result.get("outputs", [])]


@pytest.fixture(scope="module", params=["celery", "sqlite"])
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    topology = request.param
    reason = _REASON if topology == "celery" else _REASON_SINGLE
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp(topology)
    with NetNamespace() as ns:
        orthanc = Orthanc(root / "orthanc", netns=ns).start()
        postgres = PostgreSQL(netns=ns).start() if topology == "celery" else None
        redis = Redis(netns=ns).start() if topology == "celery" else None
        port = ns.free_port()
        if postgres is not None and redis is not None:
            shape = {"database": {"url": postgres.url},
                     "queue": {"backend": "celery", "broker_url": redis.url, "lease_s": 6,
                               "republish_after_s": 20},
                     "processing": {"device": "cpu", "tile_step_size": 1.0}}
            catalogue_url = postgres.socket_url
        else:
            catalogue_url = f"sqlite:///{root / 'segnode.db'}"
            shape = {"database": {"url": catalogue_url},
                     "processing": {"device": ["cpu", "cpu"], "tile_step_size": 1.0}}
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump({
            "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": port},
            "callers": [{"ae_title": "STORESCU", "addresses": ["127.0.0.1"]}],
            "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port}],
            "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "whole_study": False,
                       "destinations": ["pacs"]}],
            # 3 s: storescu can pause over a second while two workers load both cores.
            "timing": {"series_quiet_s": 3, "poll_interval_s": 0.2,
                       "retry": {"initial_delay_s": 0.5, "max_delay_s": 2}},
            "storage": {"min_free_disk_mb": 0, "spool_dir": str(root / "shared" / "spool"),
                        "output_dir": str(root / "shared" / "outputs"),
                        "quarantine_dir": str(root / "shared" / "quarantine"),
                        "models_dir": str(root / "models")},
            "web": {"enabled": False},
            **shape,
        }))
        catalogue = Catalogue(catalogue_url)
        cluster = Cluster(topology, ns, root, orthanc, postgres, redis, port, config_path,
                          catalogue, SqlJobQueue(catalogue), workers={})
        try:
            if topology == "sqlite":
                cluster.start_worker("node")
            else:
                cluster.receiver = cluster.start_process(
                    "receiver", "serve", "--role", "receiver", "--role", "dispatcher")
                cluster.start_worker("w1")
                cluster.start_worker("w2")
                ns.wait_listening([port], timeout=180, process=cluster.receiver)
                assert poll_until(lambda: len(catalogue.worker_processes(fresh_s=30)) == 2,
                                  timeout=180, interval=0.5), cluster.log("w1") + cluster.log("w2")
            yield cluster
        finally:
            for proc in [*(cluster.workers or {}).values(), cluster.receiver]:
                stop_process(proc, timeout=30)
            catalogue.close()
            for server in (redis, postgres):
                if server is not None:
                    server.close()
            orthanc.close()


def test_a_burst_of_series_is_each_processed_once_by_two_workers(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    count = 12
    batch = [write_small_phantom(tmp_path, f"burst{n:02d}") for n in range(count)]
    for series in batch:
        cluster.send(series)
    jobs = cluster.wait_done(batch, timeout=600)
    assert sorted(job.attempts for job in jobs) == [1] * count  # each claimed once
    assert {job.result["worker"] for job in jobs} == cluster.worker_names()  # both took a share
    outputs = [uid for job in jobs for uid in _outputs(job)]
    assert len(outputs) == 2 * count == len(set(outputs))  # one SEG and one SR per series
    assert set(outputs) <= cluster.orthanc.sop_instance_uids()
    status = cluster.ns.run([sys.executable, "-m", "node.cli", "status", "--config",
                             str(cluster.config_path)], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert status.returncode == 0, status.stdout + status.stderr
    shown = sorted(line.split(":")[0].removeprefix("worker ") for line in
                   status.stdout.splitlines() if line.startswith("worker "))
    assert shown == sorted(cluster.worker_names()), status.stdout
    logs = {name: cluster.log_text(name) for name in cluster.logs}
    for value in PATIENT.values():  # as sent, and as a log formatter might render them
        for form in {value, value.replace("^", " "), value.split("^")[0]}:
            leaked = [name for name, text in logs.items() if form in text]
            assert not leaked, f"{form!r} in the logs of {leaked}"


def test_a_killed_workers_job_completes_on_the_other(cluster: Cluster, tmp_path: Path) -> None:
    from tests.node.conftest import _write_case

    assert cluster.workers is not None
    case = _write_case(tmp_path, "coronal", 7)  # big enough to be killed mid-job
    series = Series(case.folder, tuple(sorted(case.folder.glob("*.dcm"))), case.series_uid)
    cluster.send(series)
    running = poll_until(lambda: next((j for j in cluster.jobs_of(series)
                                       if j.state == "running"), None), timeout=60, interval=0.05)
    assert running is not None, cluster.queue.counts()
    victim = next(name for name, proc in cluster.workers.items()
                  if f":{proc.pid}:" in running.lease_owner)
    os.kill(cluster.workers[victim].pid, signal.SIGKILL)
    cluster.workers[victim].wait(30)
    if cluster.topology == "sqlite":
        cluster.start_worker(victim)  # the one process: its restart queues the job again
    [job] = cluster.wait_done([series], timeout=240)
    assert job.attempts == 2
    if cluster.topology == "celery":  # the other worker took it over, while the first was down
        assert job.result["worker"] == ({"w1", "w2"} - {victim}).pop()
        cluster.start_worker(victim)
    seg_and_sr = _outputs(job)
    assert len(seg_and_sr) == 2
    at_orthanc = [uid for uid in cluster.orthanc.sop_instance_uids() if uid in seg_and_sr]
    assert sorted(at_orthanc) == sorted(seg_and_sr)  # exactly one copy of each output


@pytest.mark.parametrize("cluster", ["celery"], indirect=True)  # the broker's topology
def test_a_broker_outage_delays_jobs_and_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    assert cluster.redis is not None
    cluster.redis.stop()
    batch = [write_small_phantom(tmp_path, f"outage{n}") for n in range(3)]
    for series in batch:
        cluster.send(series)  # receiving goes on without the broker

    def all_queued() -> bool:
        jobs = [job for s in batch for job in cluster.jobs_of(s)]
        return len(jobs) == 3 and all(job.state == "queued" for job in jobs)

    assert poll_until(all_queued, timeout=60, interval=0.2), cluster.queue.counts()
    cluster.redis.start()  # empty: whatever it held is gone
    jobs = cluster.wait_done(batch, timeout=300)
    assert sorted(job.attempts for job in jobs) == [1, 1, 1]
