"""Receive throughput: images per second received *and stored*, segnode next to DCMTK storescp.

What is measured
----------------
One phantom MR data set (256 x 256, 16-bit, about 132 kB an instance; several
series of 256 slices) is written once. For every run a fresh receiver is
started in its own private network namespace, listening on that namespace's
127.0.0.1 only:

- ``storescp``: DCMTK ``storescp --fork`` writing to a folder, with its
  default maximum PDU (16 kB) and with ``-pdu 131072`` (the largest it takes);
- ``pynetdicom no-op SCP`` (``bench/_noop_scp.py``): a pynetdicom AE with
  default settings that takes each encoded data set, notes its SOP Instance
  UID and answers Success, storing nothing: what pynetdicom itself can
  receive, the ceiling of any SCP built on it;
- ``segnode``: ``segnode serve`` with no rules (nothing is processed, no model
  is loaded), which answers Success only after the file and its folder are
  fsynced and the catalogue row is committed (SQLite WAL, synchronous=FULL).

DCMTK ``storescu`` (TCP_NODELAY=1) sends the instances from the same
namespace over K parallel associations (the files dealt round-robin). The
time is taken with ``time.perf_counter`` from starting the first storescu to
the last one exiting; every storescu must exit 0, and afterwards every SOP
Instance UID sent must be in the receiver's store (storescp: the files in its
folder; the no-op SCP: the UIDs it noted; segnode: the rows of its
catalogue's ``instances`` table and the ``.dcm`` files in its spool), or the
run fails. Receivers start with an empty
store, runs are interleaved, and ``sync`` runs before each timed send so that
one run's dirty pages are not flushed in the next. Each (peer, K) is run R
times; the table shows the median.

storescp never calls fsync: its Success means "in the page cache", segnode's
means "on disk", so the rows do not promise the same thing. Each run also
reports "ready s", the time from starting the receiver to its port
listening, which is not part of the timed send.

Usage (root, for the network namespaces; defaults N=1000, K=1 and 4, R=3,
about 2 minutes on 2 cores): ``.venv/bin/python bench/receive.py
[--instances N] [--associations K ...] [--repeat R] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The test helpers (tests/peers.py) are not an installed package.
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import yaml  # noqa: E402
from highdicom import Volume  # noqa: E402

from bench._child import BenchError  # noqa: E402
from dicom_io.phantom_series import write_series  # noqa: E402
from model.phantom import Phantom, make_grid  # noqa: E402
from tests.peers import (  # noqa: E402
    NetNamespace,
    StoreSCP,
    dcmtk_env,
    dcmtk_tool,
    netns_available,
    stop_process,
)

SERIES_SLICES = 256
#: The phantom is sampled on a coarse slice grid (sampling 256 x 256 x 256
#: voxels takes about 20 s) and each slice repeated to reach SERIES_SLICES.
SLICE_REPEAT = 8
PIXEL_MM = 1.5
HOST = "127.0.0.1"
CALLING_AET = "STORESCU"
SEGNODE_AET = "SEGNODE"
DCMTK_TIMEOUT_S = 30
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
_LOG_FINDING = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^[WEF]: |Traceback")


@dataclass(frozen=True)
class BenchData:
    """The instances every run sends."""

    files: list[Path]
    sop_uids: frozenset[str]
    total_bytes: int


@dataclass(frozen=True)
class Served:
    """A receiver running in a namespace, as the sender and the check need it."""

    port: int
    called_aet: str
    ready_s: float
    stored_uids: Callable[[], set[str]]
    logs: list[Path]


#: Starts a receiver in a namespace, given its run folder and the number of associations.
ServeFn = Callable[[NetNamespace, Path, int], contextlib.AbstractContextManager[Served]]


@dataclass(frozen=True)
class Peer:
    """One kind of receiver: how to start it and what its Success status means."""

    name: str
    durability: str
    serve: ServeFn


@dataclass(frozen=True)
class RunResult:
    """One timed send to one fresh receiver."""

    peer: str
    associations: int
    instances: int
    seconds: float
    ready_s: float
    findings: list[str]


# ---------------------------------------------------------------------------
# data


def write_data(folder: Path, n: int) -> BenchData:
    """Write ``ceil(n / SERIES_SLICES)`` phantom MR series; return the first ``n`` files."""
    rng = np.random.default_rng(0)
    extent = SERIES_SLICES * PIXEL_MM
    grid = make_grid("axial", (PIXEL_MM * SLICE_REPEAT, PIXEL_MM, PIXEL_MM),
                     fov_mm=(extent, 384.0, 384.0), rng=rng)
    coarse, _ = Phantom(seed=0).sample(grid, modality="MR", rng=rng)
    affine = coarse.affine.copy()
    affine[:3, 3] -= affine[:3, 0] * (SLICE_REPEAT - 1) / (2 * SLICE_REPEAT)
    affine[:3, 0] /= SLICE_REPEAT
    image = Volume(np.repeat(coarse.array, SLICE_REPEAT, axis=0), affine, "PATIENT",
                   frame_of_reference_uid=coarse.frame_of_reference_uid)
    files: list[Path] = []
    for index in range(math.ceil(n / SERIES_SLICES)):
        files += write_series(image, folder / f"series{index + 1}", series_number=index + 1,
                              uid_seed=f"bench-receive-{index}",
                              series_description=f"bench receive {index + 1}")
    files = files[:n]
    uids = frozenset(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in files)
    if len(uids) != n:
        raise BenchError(f"phantom data has {len(uids)} distinct SOP Instance UIDs, not {n}")
    return BenchData(files, uids, sum(p.stat().st_size for p in files))


# ---------------------------------------------------------------------------
# peers


def _pdeathsig() -> list[str]:
    """``setpriv --pdeathsig=TERM --`` so a child dies with the bench (setpriv execs)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig=TERM", "--"] if setpriv else []


def _storescp(extra_args: Sequence[str]) -> ServeFn:
    @contextlib.contextmanager
    def serve(ns: NetNamespace, folder: Path, _associations: int) -> Iterator[Served]:
        scp = StoreSCP(folder / "received", netns=ns, fork=True, extra_args=extra_args,
                       log_path=folder / "storescp.log")
        start = time.perf_counter()
        scp.start(timeout=READY_TIMEOUT_S)
        try:
            # storescp names files <modality>.<SOP Instance UID>.
            yield Served(scp.port, scp.aet, time.perf_counter() - start,
                         lambda: {p.name.partition(".")[2] for p in scp.received_files()},
                         [scp.log_path])
        finally:
            scp.stop()

    return serve


def _segnode_config(folder: Path, port: int, associations: int) -> Path:
    config = {
        "node": {"ae_title": SEGNODE_AET, "host": HOST, "port": port,
                 "max_associations": max(10, associations)},
        "callers": [{"ae_title": CALLING_AET}],
        "destinations": [],
        "rules": [],
        "timing": {"series_quiet_s": 86400},
        "storage": {"spool_dir": "var/spool", "quarantine_dir": "var/quarantine",
                    "output_dir": "var/outputs", "models_dir": "models",
                    "min_free_disk_mb": 0},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _segnode_stored(folder: Path) -> set[str]:
    """SOP Instance UIDs in the catalogue, checked against the spool's files."""
    db = sqlite3.connect(f"file:{folder / 'var' / 'segnode.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}
    finally:
        db.close()
    spool = folder / "var" / "spool"
    files = {p.stem for p in spool.rglob("*.dcm")}
    if files != rows:
        raise BenchError(f"segnode catalogue has {len(rows)} instances but its spool "
                         f"{len(files)} files ({len(rows ^ files)} differ)")
    return rows


@contextlib.contextmanager
def _python_receiver(ns: NetNamespace, argv: Sequence[str], port: int, what: str,
                     log_path: Path, stored: Callable[[], set[str]]) -> Iterator[Served]:
    """Start a Python receiver (``argv`` after the interpreter) in ``ns``; stop it after.

    A non-zero exit status after SIGTERM is noted at the end of its log.
    """
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = ns.popen([*_pdeathsig(), sys.executable, *argv], cwd=REPO,
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            ns.wait_listening([port], timeout=READY_TIMEOUT_S, process=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(f"{what} did not start: {exc}\n{_tail(log_path)}") from exc
        yield Served(port, SEGNODE_AET, time.perf_counter() - start, stored, [log_path])
    finally:
        rc = stop_process(proc, STOP_TIMEOUT_S)
        if rc != 0:
            with log_path.open("a") as log:
                log.write(f"ERROR bench: {what} exited with status {rc} after SIGTERM\n")


@contextlib.contextmanager
def _segnode(ns: NetNamespace, folder: Path, associations: int) -> Iterator[Served]:
    port = ns.free_port()
    config = _segnode_config(folder, port, associations)
    with _python_receiver(ns, ["-m", "node.cli", "serve", "--config", str(config)], port,
                          "segnode serve", folder / "segnode.log",
                          lambda: _segnode_stored(folder)) as served:
        yield served


@contextlib.contextmanager
def _pynetdicom_noop(ns: NetNamespace, folder: Path, _associations: int) -> Iterator[Served]:
    port = ns.free_port()
    uid_file = folder / "uids.txt"
    uid_file.touch()
    argv = [str(REPO / "bench" / "_noop_scp.py"), SEGNODE_AET, HOST, str(port), str(uid_file)]
    with _python_receiver(ns, argv, port, "no-op SCP", folder / "noop-scp.log",
                          lambda: set(uid_file.read_text().split())) as served:
        yield served


PEERS = (
    Peer("storescp", "no fsync", _storescp(())),
    Peer("storescp -pdu 131072", "no fsync", _storescp(("-pdu", "131072"))),
    Peer("pynetdicom no-op SCP", "nothing stored (pynetdicom's own ceiling)", _pynetdicom_noop),
    Peer("segnode", "fsync per instance + SQLite WAL commit", _segnode),
)


# ---------------------------------------------------------------------------
# sending


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"--- {path} ---\n" + "\n".join(text[-lines:])


def _stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        stop_process(proc)


def send(ns: NetNamespace, served: Served, batches: list[list[Path]], folder: Path) -> float:
    """Run one storescu per batch in parallel; return the seconds until all have exited."""
    timeout = 60.0 + 0.2 * sum(map(len, batches))
    storescu = dcmtk_tool("storescu") or "storescu"
    argv = [[*_pdeathsig(), storescu, "-aet", CALLING_AET, "-aec", served.called_aet,
             "-to", str(DCMTK_TIMEOUT_S), "-ta", str(DCMTK_TIMEOUT_S),
             "-td", str(DCMTK_TIMEOUT_S), HOST, str(served.port), *map(str, batch)]
            for batch in batches]
    logs = [folder / f"storescu-{i + 1}.log" for i in range(len(batches))]
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(path.open("wb")) for path in logs]
        stack.callback(_stop_all, procs)
        start = time.perf_counter()
        for args, handle in zip(argv, handles, strict=True):
            procs.append(ns.popen(args, env=dcmtk_env(), stdin=subprocess.DEVNULL,
                                  stdout=handle, stderr=subprocess.STDOUT))
        deadline = start + timeout
        try:
            for proc in procs:
                proc.wait(max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            raise BenchError(f"storescu still running after {timeout:.0f} s") from None
        seconds = time.perf_counter() - start
    failed = [(log, p.returncode) for log, p in zip(logs, procs, strict=True) if p.returncode]
    if failed:
        raise BenchError("storescu failed:\n" + "\n".join(
            f"exit status {rc}\n{_tail(log)}" for log, rc in failed))
    return seconds


def _findings(paths: Sequence[Path]) -> list[str]:
    """Warning and error lines of the logs (DCMTK ``W:``/``E:``, Python levels)."""
    found: list[str] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            found += [f"{path.name}: {line}" for line in path.read_text(errors="replace")
                      .splitlines() if _LOG_FINDING.search(line)]
    return found


def run_once(peer: Peer, data: BenchData, associations: int, folder: Path) -> RunResult:
    """Start ``peer`` in a fresh namespace, send everything, check it was all stored."""
    folder.mkdir(parents=True)
    batches = [data.files[i::associations] for i in range(associations)]
    with NetNamespace() as ns, peer.serve(ns, folder, associations) as served:
        os.sync()
        seconds = send(ns, served, batches, folder)
        stored = served.stored_uids()
        missing, extra = data.sop_uids - stored, stored - data.sop_uids
        if missing or extra:
            raise BenchError(
                f"{peer.name}: {len(data.sop_uids)} sent, {len(stored)} stored, "
                f"{len(missing)} missing, {len(extra)} unexpected (e.g. "
                f"{sorted(missing or extra)[0]})\n" + "\n".join(map(_tail, served.logs)))
    findings = _findings([*served.logs, *folder.glob("storescu-*.log")])
    return RunResult(peer.name, associations, len(stored), seconds, served.ready_s, findings)


# ---------------------------------------------------------------------------
# report


def _command_line(argv: Sequence[str], timeout: float = 30.0) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def dcmtk_version(tool: str) -> str:
    """First line of DCMTK ``tool --version`` (never pynetdicom's script of that name)."""
    path = dcmtk_tool(tool)
    if path is None:
        raise BenchError(f"DCMTK {tool} not found (apt-get install dcmtk)")
    return (_command_line([path, "--version"]).splitlines() or [""])[0]


def describe_machine(workdir: Path) -> list[str]:
    """nproc, memory, file system of the work folder, versions of the peers and of segnode."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fs = _command_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(workdir)])
    commit = _command_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = _command_line(["git", "status", "--porcelain", "--untracked-files=no"])
    source = f"git {commit}{', modified tree' if dirty else ''}" if commit else "no git"
    return [
        f"machine:  {len(os.sched_getaffinity(0))} CPUs (nproc), {memory:.1f} GiB RAM, "
        f"Linux {platform.release()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        f"workdir:  {workdir} ({fs or 'file system unknown'})",
        f"storescp: {dcmtk_version('storescp')}; storescu: {dcmtk_version('storescu')}",
        f"segnode:  {importlib.metadata.version('segnode')} ({source}), "
        f"pynetdicom {importlib.metadata.version('pynetdicom')}",
    ]


_COLUMNS = (f"{'peer':<22} {'assoc':>5} {'instances':>9} {'seconds':>8} {'images/s':>9} "
            f"{'MB/s':>6} {'ready s':>7}")


def _row(name: str, associations: int, instances: int, seconds: float, ready_s: float,
         data: BenchData) -> str:
    return (f"{name:<22} {associations:>5} {instances:>9} {seconds:>8.2f} "
            f"{instances / seconds:>9.1f} {data.total_bytes / seconds / 1e6:>6.1f} "
            f"{ready_s:>7.1f}")


def median_rows(results: list[RunResult], ks: Sequence[int]) -> list[dict]:
    """The medians as records: peer, associations, images per second."""
    rows = []
    for k in ks:
        for peer in PEERS:
            runs = [r for r in results if r.peer == peer.name and r.associations == k]
            rows.append({"peer": peer.name, "associations": k, "instances": runs[0].instances,
                         "images_per_s": statistics.median(r.instances / r.seconds
                                                           for r in runs)})
    return rows


def median_table(results: list[RunResult], data: BenchData, ks: Sequence[int]) -> list[str]:
    """One row per (peer, K): median seconds and ready time, the images/s range of the runs."""
    lines = [f"{_COLUMNS} {'range images/s':>15}  stored means"]
    for k in ks:
        for peer in PEERS:
            runs = [r for r in results if r.peer == peer.name and r.associations == k]
            rates = [r.instances / r.seconds for r in runs]
            median = _row(peer.name, k, runs[0].instances,
                          statistics.median(r.seconds for r in runs),
                          statistics.median(r.ready_s for r in runs), data)
            lines.append(f"{median} {f'{min(rates):.0f}-{max(rates):.0f}':>15}  "
                         f"{peer.durability}")
    return lines


# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances per run")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4],
                        help="parallel storescu associations (one or more values)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per peer and K")
    parser.add_argument("--json", type=Path, help="also write the medians as JSON here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent folder of the temporary data (default: system temp)")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.repeat < 1 or min(args.associations) < 1:
        parser.error("--instances, --associations and --repeat must be at least 1")
    if max(args.associations) > args.instances:
        parser.error("--associations cannot exceed --instances")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a run failed (its folder is kept)."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="segnode-bench-", dir=args.workdir))
    ok = False
    try:
        if reason := netns_available():
            raise BenchError(reason)
        for line in describe_machine(workdir):
            print(line)
        start = time.perf_counter()
        data = write_data(workdir / "data", args.instances)
        print(f"data:     {len(data.files)} MR instances, 256 x 256 16-bit, "
              f"{data.total_bytes / 1e6:.1f} MB ({data.total_bytes / len(data.files) / 1e3:.0f}"
              f" kB each), written in {time.perf_counter() - start:.1f} s\n")
        print(f"{_COLUMNS}  run")
        results: list[RunResult] = []
        for repeat in range(args.repeat):
            for k in args.associations:
                for peer in PEERS:
                    folder = workdir / f"run{repeat + 1}-k{k}-{peer.name.replace(' ', '')}"
                    result = run_once(peer, data, k, folder)
                    shutil.rmtree(folder)
                    results.append(result)
                    row = _row(peer.name, k, result.instances, result.seconds,
                               result.ready_s, data)
                    print(f"{row}  {repeat + 1}", flush=True)
                    for finding in result.findings:
                        print(f"    log: {finding}")
        print(f"\nmedian of {args.repeat} runs:")
        print("\n".join(median_table(results, data, args.associations)))
        if args.json:
            args.json.write_text(json.dumps(median_rows(results, args.associations), indent=2))
        print("\nstorescp: Success is sent once the file is written to the page cache; "
              "storescp has no option to fsync.\n"
              "no-op:    a pynetdicom SCP that answers Success and stores nothing: what any "
              "SCP on pynetdicom can reach at most.\n"
              "segnode:  Success is sent after fsync of the file and its folder and the "
              "commit of its catalogue row (SQLite WAL, synchronous=FULL).\n"
              "ready s:  start of the receiver to its port listening (not in 'seconds').")
        ok = True
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
    finally:
        if ok or not any(workdir.iterdir()):
            shutil.rmtree(workdir)
        else:
            print(f"work folder kept for inspection: {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
