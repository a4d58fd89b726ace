"""Node overhead: last instance received to SEG and SR acknowledged by Orthanc, minus the network.

What is measured
----------------
``segnode serve`` (a series rule: MR, the built-in demo model, CPU, series
quiet time Q) and Orthanc (its destination) run on 127.0.0.1 in a private
network namespace.
DCMTK ``storescu`` sends a phantom MR series of 300 axial slices of 256 x 256
(3 x 1.5 x 1.5 mm) over one association. From the node's own records:

- ``last received``: the catalogue's ``received_at`` of the series' last instance;
- ``delivered``: the outbox's ``delivered_at`` of the later of the SEG and the
  SR, i.e. when Orthanc acknowledged the C-STORE (Success);
- ``network``: the job's time inside the network's forward passes (its stage
  timing ``segment.network``).

The overhead is ``delivered - last received - network``; the target is at most
5 s plus Q. The timeline splits it: quiet time and queueing (last received to
job created), waiting for the worker, the job, and its outputs' way to Orthanc
(first delivery created to the last acknowledged). The stage timings of the
job (read, segment's preprocessing and export, measure, write) are printed to
show where the rest goes. The node is
started (and its model loaded) before the series is sent. R runs, each with a
new series; the table shows the median.

Usage (root; about 3 minutes): ``.venv/bin/python bench/node_overhead.py
[--repeat R] [--quiet-s Q] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import BenchError  # noqa: E402
from node.catalogue import Catalogue  # noqa: E402
from node.config import RetryConfig  # noqa: E402
from node.jobqueue import SqlJobQueue  # noqa: E402
from node.outbox import Outbox  # noqa: E402
from tests.peers import (  # noqa: E402
    NetNamespace,
    Orthanc,
    netns_available,
    orthanc_available,
    poll_until,
    stop_process,
    storescu,
    write_phantom_series,
)


def _config(root: Path, port: int, orthanc: Orthanc, quiet_s: float) -> Path:
    config = {
        "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": port},
        "callers": [{"ae_title": "STORESCU", "addresses": ["127.0.0.1"]}],
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
        # A series rule: its job waits the series quiet time Q (a whole-study
        # rule would wait the study's).
        "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "destinations": ["pacs"],
                   "whole_study": False}],
        "timing": {"series_quiet_s": quiet_s, "study_quiet_s": quiet_s + 1,
                   "poll_interval_s": 0.2},
        "storage": {"min_free_disk_mb": 0, "spool_dir": str(root / "var" / "spool"),
                    "output_dir": str(root / "var" / "out"),
                    "quarantine_dir": str(root / "var" / "quarantine")},
        "database": {"url": f"sqlite:///{root / 'var' / 'segnode.db'}"},
        "processing": {"device": "cpu"},
        "web": {"enabled": False},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait(what: str, check: Callable[[], Any], timeout: float, log: Path) -> Any:
    value = poll_until(check, timeout, 0.1)
    if value:
        return value
    tail = "\n".join(log.read_text().splitlines()[-30:]) if log.exists() else ""
    raise BenchError(f"timed out waiting for {what}; node log:\n{tail}")


def run_once(ns: NetNamespace, root: Path, orthanc: Orthanc, port: int, index: int,
             log: Path) -> dict:
    """Send one 300-slice series and measure its way back to Orthanc."""
    series = write_phantom_series(root / "data" / f"series-{index}", uid_seed=f"overhead-{index}",
                                  fov_mm=(900.0, 384.0, 384.0), spacing_mm=(3.0, 1.5, 1.5),
                                  seed=index)
    result = storescu(series.folder, "127.0.0.1", port, called_aet="SEGNODE", netns=ns)
    if result.returncode != 0:
        raise BenchError(f"storescu failed: {result.stderr[-500:]}")
    catalogue = Catalogue(f"sqlite:///{root / 'var' / 'segnode.db'}")
    queue = SqlJobQueue(catalogue)
    outbox = Outbox(catalogue, RetryConfig())
    try:
        def delivered():  # noqa: ANN202 - local helper
            jobs = [j for j in queue.list() if j.series_uid == series.series_uid]
            if not jobs or jobs[0].state != "done":
                return None
            deliveries = outbox.for_job(jobs[0].id)
            if deliveries and all(d.state == "done" for d in deliveries):
                return jobs[0], deliveries
            return None

        job, deliveries = _wait("SEG and SR at Orthanc", delivered, 900, log)
        received = catalogue.series_received(series.series_uid)
        assert received is not None
        last_received = received[1]
        done = max(d.delivered_at or 0.0 for d in deliveries)
        timings = job.result.get("timings", {})
        network = timings.get("segment.network", 0.0)
        outputs_at = min(d.created_at for d in deliveries)
        timeline = {"quiet and queued": job.created_at - last_received,
                    "waiting for the worker": (job.started_at or 0.0) - job.created_at,
                    "job": (job.finished_at or 0.0) - (job.started_at or 0.0),
                    "outputs to delivered": done - outputs_at}
        return {"last_to_delivered_s": done - last_received, "network_s": network,
                "overhead_s": done - last_received - network, "timings": timings,
                "timeline": {k: round(v, 3) for k, v in timeline.items()},
                "outputs": len(deliveries)}
    finally:
        catalogue.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="series sent (median shown)")
    parser.add_argument("--quiet-s", type=float, default=2.0, help="series quiet time Q")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    reason = netns_available() or orthanc_available()
    if reason:
        print(f"not measured: {reason}")
        if args.json:
            args.json.write_text(json.dumps({"problems": {"node overhead": reason}}))
        return 1
    root = Path(tempfile.mkdtemp(prefix="segnode-overhead-"))
    runs: list[dict] = []
    problems: dict[str, str] = {}
    with NetNamespace() as ns:
        orthanc = Orthanc(root / "orthanc", netns=ns)
        orthanc.start()
        port = ns.free_port()
        config = _config(root / "node", port, orthanc, args.quiet_s)
        log = root / "node" / "node.log"
        with log.open("a") as out:
            proc = ns.popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config)],
                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            ns.wait_listening([port], timeout=180, process=proc)
            for index in range(args.repeat):
                runs.append(run_once(ns, root / "node", orthanc, port, index, log))
                print(f"run {index + 1}: {json.dumps(runs[-1])}", flush=True)
        except BenchError as exc:
            problems["node overhead"] = str(exc)
        finally:
            stop_process(proc, timeout=20)
            orthanc.close()
    if runs:
        median = {key: statistics.median(r[key] for r in runs)
                  for key in ("last_to_delivered_s", "network_s", "overhead_s")}
        target = 5.0 + args.quiet_s
        print(f"\n300 x 256 x 256 MR series, demo model, CPU, quiet time {args.quiet_s} s, "
              f"median of {len(runs)}")
        print(f"last instance received -> SEG and SR acknowledged by Orthanc: "
              f"{median['last_to_delivered_s']:.2f} s")
        print(f"  of which the network's forward passes:                    "
              f"{median['network_s']:.2f} s")
        print(f"  overhead:                                                 "
              f"{median['overhead_s']:.2f} s (target <= {target:.1f} s: "
              f"{'met' if median['overhead_s'] <= target else 'NOT met'})")
        print("timeline of the last run: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in runs[-1]["timeline"].items()))
        print("stages of the last job: " + ", ".join(f"{k} {v:.2f} s"
                                                     for k, v in runs[-1]["timings"].items()))
    else:
        median, target = {}, 5.0 + args.quiet_s
    for name, problem in problems.items():
        print(f"{name}: {problem}")
    if args.json:
        args.json.write_text(json.dumps({"median": median, "target_s": target, "runs": runs,
                                         "quiet_s": args.quiet_s, "problems": problems},
                                        indent=2))
    return 1 if problems or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
