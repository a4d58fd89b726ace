"""Faults during a soak of the real node: each check ends with "lost: N, duplicated: N".

One ``segnode serve`` (SQLite catalogue, the demo model on the CPU, two
workers) receives small phantom MR series from DCMTK ``storescu`` and sends
each series' SEG and SR to Orthanc, all in one private network namespace.
The sender behaves like a PACS: a series whose ``storescu`` fails is sent
again, whole, a second later. Faults:

- ``SIGKILL``: the node is killed, in turn, while a series is being received,
  while a job runs and while a delivery is pending, then started again;
- disk full: the spool is a tmpfs (root only) filled with ballast, so that
  a series fails half way; the ballast is removed and the sender retries;
- database locked: another process holds an exclusive SQLite lock on the
  catalogue for 8 s while a series arrives;
- PACS down: Orthanc is stopped while jobs finish, and started again;
- clock jumps: the node runs (the whole soak) with
  ``harden/clockshift/clockshift.c`` preloaded (built with the system C
  compiler; offset 0 until this check), which steps the process's wall
  clock (``CLOCK_REALTIME``) an hour forward, then back, while series wait
  out their quiet time; the monotonic clock runs on, as under an NTP
  step. (libfaketime cannot do this: with the monotonic clock left alone
  its ``clock_nanosleep`` fails with EINVAL.)

Afterwards every series must have exactly one SEG and one SR at Orthanc
(its done job's outputs) and every instance sent in the catalogue. Lost:
series without their outputs at Orthanc plus instances missing from the
catalogue. Duplicated: objects at Orthanc beyond one SEG and one SR per
series (a series segmented twice and both sent).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import yaml

from harden.results import CheckResult
from harden.seeds import REPO
from node.catalogue import Catalogue
from node.config import RetryConfig
from node.jobqueue import Job, SqlJobQueue
from node.outbox import Outbox
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

__all__ = ["run", "unavailable"]

_CLOCKSHIFT = Path(__file__).resolve().parent / "clockshift" / "clockshift.c"
_QUIET_S = 6.0
_SPOOL_MB = 256


def unavailable() -> str | None:
    """Why the fault soak cannot run here, or None."""
    return netns_available() or orthanc_available() or dcmtk_available("storescu")


@dataclass
class _Node:
    """The node under test, its peers and the sender's bookkeeping."""

    ns: NetNamespace
    root: Path
    orthanc: Orthanc
    port: int
    config_path: Path
    catalogue: Catalogue
    proc: subprocess.Popen | None = None
    #: Extra environment of every start (the clock shim, when it could be built).
    extra_env: dict[str, str] = field(default_factory=dict)
    sent: list[Series] = field(default_factory=list)
    sending: threading.Event = field(default_factory=threading.Event)
    resends: int = 0

    @property
    def queue(self) -> SqlJobQueue:
        return SqlJobQueue(self.catalogue)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.extra_env}
        with (self.root / "node.log").open("ab") as log:
            self.proc = self.ns.popen([sys.executable, "-m", "node.cli", "serve", "--config",
                                       str(self.config_path)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.ns.wait_listening([self.port], timeout=180, process=self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.proc = None

    def send(self, series: Series, *, attempts: int = 60) -> None:
        """Send the series until one ``storescu`` of it succeeds (as a PACS retries).

        ``sending`` is set while a ``storescu`` runs, not while the sender waits to retry.
        """
        for _ in range(attempts):
            self.sending.set()
            try:
                result = storescu(series.folder, "127.0.0.1", self.port, called_aet="SEGNODE",
                                  netns=self.ns, timeout=20)
            finally:
                self.sending.clear()
            if result.returncode == 0:
                break
            self.resends += 1
            time.sleep(1.0)
        else:
            raise RuntimeError(f"series {series.folder.name} not accepted in {attempts} tries")
        self.sent.append(series)

    def jobs_of(self, series: Series) -> list[Job]:
        return [j for j in self.queue.list(limit=100000) if j.series_uid == series.series_uid]

    def outputs_delivered(self, batch: list[Series], timeout: float) -> bool:
        """Wait until each series has a done job whose outputs Orthanc holds."""
        def done() -> bool:
            jobs = [self._done_job(s) for s in batch]
            if not all(jobs):
                return False
            wanted = {uid for job in jobs for uid in _outputs(job)}
            return wanted <= self.orthanc.sop_instance_uids()
        return bool(poll_until(done, timeout=timeout, interval=1.0))

    def _done_job(self, series: Series) -> Job | None:
        done = [j for j in self.jobs_of(series) if j.state == "done"]
        return done[-1] if done else None

    def tally(self, batch: list[Series], orthanc_before: set[str]) -> tuple[int, int, str]:
        """(lost, duplicated, details) of one batch."""
        at_orthanc = self.orthanc.sop_instance_uids() - orthanc_before
        lost = 0
        jobs_run = 0
        for series in batch:
            job = self._done_job(series)
            jobs_run += len(self.jobs_of(series))
            if job is None or not set(_outputs(job)) <= at_orthanc:
                lost += 1
            lost += max(0, len(series.paths) - self.catalogue.instance_count(series.series_uid))
        duplicated = max(0, len(at_orthanc) - 2 * len(batch))
        return lost, duplicated, f"{jobs_run} jobs for {len(batch)} series"


def _outputs(job: Job) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in job.result.get("outputs", [])]


def _config(root: Path, orthanc: Orthanc, port: int, spool: Path) -> dict:
    return {
        "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": port},
        "callers": [{"ae_title": "STORESCU", "addresses": ["127.0.0.1"]}],
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
        "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "whole_study": False,
                   "destinations": ["pacs"]}],
        "timing": {"series_quiet_s": _QUIET_S, "poll_interval_s": 0.2,
                   "retry": {"initial_delay_s": 0.5, "max_delay_s": 2}},
        "storage": {"min_free_disk_mb": 0, "spool_dir": str(spool),
                    "output_dir": str(root / "outputs"),
                    "quarantine_dir": str(root / "quarantine"),
                    "models_dir": str(root / "models")},
        "database": {"url": f"sqlite:///{root / 'segnode.db'}"},
        "processing": {"device": ["cpu", "cpu"], "tile_step_size": 1.0},
        "web": {"enabled": False},
    }


@contextmanager
def _small_spool(folder: Path) -> Iterator[bool]:
    """A tmpfs of ``_SPOOL_MB`` at ``folder`` when this process may mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_SPOOL_MB}m", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _phantoms(root: Path, prefix: str, count: int) -> list[Series]:
    patient = {"patient_name": "Soak^Patient", "patient_id": "SOAK-PID-7",
               "patient_birth_date": "19600101"}
    return [write_phantom(root, f"{prefix}{n:03d}", fov_mm=(96.0, 128.0, 128.0), **patient)
            for n in range(count)]


def _row(check: str, node: _Node, batch: list[Series], before: set[str], events: int,
         timeout: float, note: str = "") -> CheckResult:
    node.outputs_delivered(batch, timeout)
    lost, duplicated, jobs = node.tally(batch, before)
    figure = f"lost: {lost}, duplicated: {duplicated}; {jobs}" + (f"; {note}" if note else "")
    findings = [] if lost + duplicated == 0 else [f"{check}: {figure}\n{_tail(node)}"]
    return CheckResult(check, events, int(lost + duplicated > 0), figure, findings)


def _tail(node: _Node) -> str:
    return (node.root / "node.log").read_text(errors="replace")[-2000:]


def _kill_soak(node: _Node, root: Path, count: int, kills: int, seed: int) -> CheckResult:
    batch = _phantoms(root, "kill", count)
    before = node.orthanc.sop_instance_uids()
    rng = random.Random(seed)
    gave_up: list[str] = []

    def send_all() -> None:
        try:
            for series in batch:
                node.send(series)
        except RuntimeError as exc:  # the node refused a series 60 times running
            gave_up.append(str(exc))

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    outbox = Outbox(node.catalogue, RetryConfig())
    conditions: dict[str, Callable[[], bool]] = {
        "receive": node.sending.is_set,
        "job": lambda: node.queue.counts().get("running", 0) > 0,
        "dispatch": lambda: outbox.counts().get("pending", 0) > 0,
    }
    hits: dict[str, int] = {kind: 0 for kind in conditions}
    killed = 0
    for n in range(kills):
        if gave_up:
            break
        kind = list(conditions)[n % len(conditions)]
        if n:  # after a restart the node runs a while, as it would between crashes (killed
            time.sleep(rng.uniform(1.0, 4.0))  # at once, it would never take a series in)
        if poll_until(conditions[kind], timeout=90, interval=0.02):
            time.sleep(rng.uniform(0.0, 0.3))
            hits[kind] += 1
        node.kill()
        killed += 1
        time.sleep(0.5)
        node.start()
    sender.join(timeout=60 * count)
    check = "fault: SIGKILL (receive, job, dispatch)"
    note = "killed during " + ", ".join(f"{kind} {hits[kind]}" for kind in hits)
    if gave_up:
        return CheckResult(check, killed, 1, f"the sender gave up; {note}",
                           [f"{check}: {gave_up[0]}\n{_tail(node)}"])
    return _row(check, node, batch, before, kills, 120 + 20 * count,
                note + f"; {node.resends} series resent")


def _disk_full(node: _Node, root: Path, spool: Path, mounted: bool) -> CheckResult:
    check = "fault: disk full mid-series"
    if not mounted:
        return CheckResult(check, 0, 0, "not run: the spool tmpfs needs root")
    [series] = _phantoms(root, "disk", 1)
    before = node.orthanc.sop_instance_uids()
    half = sum(p.stat().st_size for p in series.paths) // 2
    ballast = spool / "ballast"
    free = shutil.disk_usage(spool).free
    with ballast.open("wb") as out:
        out.truncate(0)
        out.write(b"\0" * max(free - half, 0))
    failed = storescu(series.folder, "127.0.0.1", node.port, called_aet="SEGNODE",
                      netns=node.ns, timeout=20)
    ballast.unlink()
    node.send(series)
    note = ("the first send failed part way" if failed.returncode != 0
            else "the first send did not fail")
    row = _row(check, node, [series], before, 1, 180, note)
    if failed.returncode == 0:
        row.failures, row.findings = 1, [f"{check}: the spool did not fill up"]
    return row


def _database_locked(node: _Node, root: Path) -> CheckResult:
    [series] = _phantoms(root, "lock", 1)
    before = node.orthanc.sop_instance_uids()
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(8)\n"
        "db.execute('COMMIT')\n"), str(node.root / "segnode.db")], stdout=subprocess.PIPE,
        text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    started = time.monotonic()
    node.send(series)
    took = time.monotonic() - started
    locker.wait(30)
    row = _row("fault: database locked by another process", node, [series], before, 1, 180,
               f"series accepted {took:.1f} s after the start of an 8 s lock")
    if took < 5.0:  # it should have waited for the lock (busy timeout), not gone around it
        row.failures, row.findings = 1, [f"{row.check}: stored during the lock ({took:.1f} s)"]
    return row


def _pacs_down(node: _Node, root: Path) -> CheckResult:
    batch = _phantoms(root, "pacs", 2)
    before = node.orthanc.sop_instance_uids()
    node.orthanc.stop()
    for series in batch:
        node.send(series)
    outbox = Outbox(node.catalogue, RetryConfig())
    refused = poll_until(lambda: [d for d in outbox.list(limit=50) if d.attempts > 0],
                         timeout=180, interval=0.5)
    node.orthanc.start()
    return _row("fault: PACS refusing, then accepting", node, batch, before, len(batch), 180,
                f"{len(refused or [])} deliveries refused first")


def _build_clockshift(folder: Path) -> Path | None:
    """The clock-stepping shim, compiled into ``folder``; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    library = folder / "clockshift.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(_CLOCKSHIFT),
                    "-ldl"], check=True, capture_output=True)
    return library


def _clock_jumps(node: _Node, root: Path) -> CheckResult:
    check = "fault: wall clock jumps during quiet time"
    offset = node.extra_env.get("CLOCKSHIFT_FILE")
    if offset is None:
        return CheckResult(check, 0, 0, "not run: no C compiler for the clock shim")
    batch = _phantoms(root, "clock", 2)
    before = node.orthanc.sop_instance_uids()
    waits = []
    for series, jump in zip(batch, ("3600", "-3600"), strict=True):
        files = list(series.paths)
        first = storescu(files[: len(files) // 2], "127.0.0.1", node.port,
                         called_aet="SEGNODE", netns=node.ns, timeout=20)
        if first.returncode != 0:
            raise RuntimeError("the first half of a clock-jump series was not accepted")
        Path(offset).write_text(f"{jump}\n")  # NTP steps the clock mid-series
        time.sleep(2.0)
        node.send(series)
        sent_at = time.monotonic()
        poll_until(lambda s=series: node.jobs_of(s), timeout=120, interval=0.2)
        waits.append(time.monotonic() - sent_at)
    Path(offset).write_text("0\n")
    row = _row(check, node, batch, before, len(batch), 180,
               f"job queued {waits[0]:.1f} s (+1 h) and {waits[1]:.1f} s (-1 h) after the "
               f"last instance, quiet time {_QUIET_S:g} s")
    early = [s.folder.name for s in batch if len(node.jobs_of(s)) != 1]
    if early:  # found complete before its quiet time, then reopened by the rest
        row.failures, row.findings = 1, [f"{check}: more than one job for {early}"]
    return row


def run(budget: str = "short") -> list[CheckResult]:
    """The fault checks: a few series and kills (short) or a 200-series soak (long)."""
    count, kills = (3, 3) if budget == "short" else (200, 30)
    with tempfile.TemporaryDirectory(prefix="segnode-faults-") as tmp, NetNamespace() as ns:
        root = Path(tmp)
        orthanc = Orthanc(root / "orthanc", netns=ns).start()
        spool = root / "spool"
        try:
            with _small_spool(spool) as mounted:
                port = ns.free_port()
                config_path = root / "config.yaml"
                config_path.write_text(yaml.safe_dump(_config(root, orthanc, port, spool)))
                node = _Node(ns, root, orthanc, port, config_path,
                             Catalogue(f"sqlite:///{root / 'segnode.db'}"))
                library = _build_clockshift(root)
                if library is not None:  # the whole soak runs with it (offset 0 but once)
                    (root / "clock-offset").write_text("0\n")
                    node.extra_env = {"LD_PRELOAD": str(library),
                                      "CLOCKSHIFT_FILE": str(root / "clock-offset")}
                node.start()
                checks: list[Callable[[], CheckResult]] = [
                    lambda: _kill_soak(node, root / "series", count, kills, seed=9),
                    lambda: _disk_full(node, root / "series", spool, mounted),
                    lambda: _database_locked(node, root / "series"),
                    lambda: _pacs_down(node, root / "series"),
                    lambda: _clock_jumps(node, root / "series"),
                ]
                rows = []
                try:
                    for check in checks:
                        started = time.monotonic()
                        rows.append(check())
                        print(f"{rows[-1].check}: {rows[-1].figure} "
                              f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
                finally:
                    node.stop()
                    node.catalogue.close()
        finally:
            orthanc.close()
    return rows
