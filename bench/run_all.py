"""``make bench``: every speed and memory target of segnode in one table, next to its peer.

Runs each benchmark script (its own docstring says what it measures and how)
with ``--json`` into ``.bench/``, then prints one table, stage by stage: the
segnode figure, the peer's figure from the same run, their ratio, the target
and whether it is met, and writes the table to ``.bench/summary.json``. A
benchmark that cannot run (a peer that does not install, no root for the
network namespaces of the receive benchmark) is reported as such with its
reason, never left out.

- ``bench/end_to_end.py``: ``segnode segment`` against MRSegmentator 2.0's DICOM path;
- ``bench/inference.py``: whole-body CPU inference against nnU-Net's stock predictor;
- ``bench/seg_write.py``: DICOM-SEG writing against dcmqi;
- ``bench/receive.py``: receiving against DCMTK storescp (root);
- ``bench/node_overhead.py``: last instance in to SEG and SR at Orthanc, minus the
  network's forward passes (root; its "peer" is the target itself);
- ``bench/scale_out.py``: series per hour with 2 Celery workers next to 1, and the
  queue latency under a burst of 50 series (PostgreSQL and Redis; no target, reported).

Usage (about 30 minutes on 2 cores): ``.venv/bin/python bench/run_all.py
[--only NAME ...] [--tile-step S] [--table-only]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".bench"
BENCHES = ("end_to_end", "inference", "seg_write", "receive", "node_overhead", "scale_out")


@dataclass
class Row:
    """One target: the figures, their ratio and whether it is met."""

    stage: str
    segnode: float | None
    peer: float | None
    peer_name: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """segnode / peer."""
        if self.segnode is None or not self.peer:
            return None
        return self.segnode / self.peer


def _ratio_row(stage: str, ours: float | None, theirs: float | None, peer: str, limit: float,
               target: str) -> Row:
    met = None if ours is None or not theirs else ours / theirs <= limit
    return Row(stage, ours, theirs, peer, target, met)


def _end_to_end(data: dict) -> list[Row]:
    by_stage = {r["stage"]: r for r in data["rows"]}
    time_row, memory = by_stage["wall time s"], by_stage["peak memory GiB"]
    peer = "MRSegmentator 2.0 DICOM path"
    return [_ratio_row("end to end: wall time s", time_row["segnode"], time_row["peer"], peer,
                       0.2, "<= 1/5 of peer"),
            _ratio_row("end to end: peak memory GiB", memory["segnode"], memory["peer"], peer,
                       1 / 3, "<= 1/3 of peer")]


def _inference(data: dict) -> list[Row]:
    rows = {(r["case"], r["stage"]): r for r in data["rows"]}
    peer = "nnU-Net stock predictor"

    def pick(stage: str) -> dict:
        return rows.get(("segnode", stage), {"segnode": None, "nnunet": None})

    network, pre, post = pick("network, 1 fold s"), pick("preprocessing s"), pick(
        "export (resample + argmax) s")
    peak = pick("peak memory GiB")
    compile_s = pick("compile, once per fold s")
    speedup = (network["nnunet"] / network["segnode"]
               if network["segnode"] and network["nnunet"] else None)
    return [
        Row("whole body: network per fold s", network["segnode"], network["nnunet"], peer,
            ">= 1.8x faster", None if speedup is None else speedup >= 1.8,
            f"{speedup:.2f}x faster; compile {compile_s['segnode']:.0f} s once per fold"
            if speedup else ""),
        _ratio_row("whole body: preprocessing s", pre["segnode"], pre["nnunet"], peer, 0.25,
                   "<= 1/4 of peer"),
        _ratio_row("whole body: export s", post["segnode"], post["nnunet"], peer, 0.25,
                   "<= 1/4 of peer"),
        Row("whole body: peak memory GiB", peak["segnode"], peak["nnunet"], peer, "<= 4 GiB",
            None if peak["segnode"] is None else peak["segnode"] <= 4.0),
    ]


def _seg_write(data: dict) -> list[Row]:
    rows = {r["case"]: r for r in data["rows"]}
    dcmqi = rows.get("peer: dcmqi itkimage2segimage BINARY", {})
    binary, labelmap = rows.get("segnode BINARY", {}), rows.get("segnode LABELMAP", {})
    peer = "dcmqi itkimage2segimage"
    peak = max((r.get("peak_mib", 0) for r in (binary, labelmap)), default=0) / 1024
    return [
        _ratio_row("SEG BINARY 40 x 300 slices s", binary.get("seconds"), dcmqi.get("seconds"),
                   peer, 1.0, "<= peer"),
        Row("SEG LABELMAP s", labelmap.get("seconds"), None, "-", "<= 0.3 s",
            None if labelmap.get("seconds") is None else labelmap["seconds"] <= 0.3),
        Row("SEG peak memory GiB", peak or None, dcmqi.get("peak_mib", 0) / 1024 or None, peer,
            "< 0.5 GiB", None if not peak else peak < 0.5),
    ]


def _receive(data: list[dict]) -> list[Row]:
    one = {r["peer"]: r["images_per_s"] for r in data if r["associations"] == 1}
    ours, theirs = one.get("segnode"), one.get("storescp")
    met = None if ours is None or not theirs else ours / theirs >= 0.5
    ceiling = one.get("pynetdicom no-op SCP")
    note = "segnode fsyncs, storescp does not"
    if ceiling:
        note += (f"; pynetdicom storing nothing: {ceiling:.0f} images/s "
                 f"({ceiling / theirs:.2f} of storescp)" if theirs else "")
    return [Row("receive, 1 association images/s", ours, theirs, "DCMTK storescp",
                ">= 1/2 of peer", met, note)]


def _node_overhead(data: dict) -> list[Row]:
    median = data.get("median") or {}
    overhead = median.get("overhead_s")
    target = data["target_s"]
    return [Row("node overhead s", overhead, None, "-", f"<= {target:.1f} s (5 + quiet)",
                None if overhead is None else overhead <= target,
                f"last instance to SEG+SR acknowledged {median.get('last_to_delivered_s', 0):.1f}"
                f" s, of which network {median.get('network_s', 0):.1f} s")]


def _scale_out(data: dict) -> list[Row]:
    one, two = ({c["workers"]: c for c in data["cases"]}[k] for k in (1, 2))
    peer = "segnode, 1 worker"
    return [
        Row(f"burst of {two['series']}: series per hour", two["series_per_hour"],
            one["series_per_hour"], peer, "reported", None, "2 workers, CPU, demo model"),
        Row("burst: queue latency p95 s", two["latency_p95_s"], one["latency_p95_s"], peer,
            "reported", None, f"median {two['latency_median_s']:.1f} s vs "
                              f"{one['latency_median_s']:.1f} s"),
    ]


READERS: dict[str, Callable[[object], list[Row]]] = {
    "end_to_end": _end_to_end, "inference": _inference, "seg_write": _seg_write,
    "receive": _receive, "node_overhead": _node_overhead, "scale_out": _scale_out,
}


def run_bench(name: str, tile_step: float) -> tuple[object | None, str]:
    """Run one benchmark script; its JSON and, if it failed, why."""
    out = OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "bench" / f"{name}.py"), "--json", str(out)]
    if name == "inference":
        command += ["--tile-step", str(tile_step)]
    print(f"== bench/{name}.py", flush=True)
    proc = subprocess.run(command, cwd=REPO)
    data = json.loads(out.read_text()) if out.exists() else None
    problem = "" if proc.returncode == 0 else f"exit status {proc.returncode}"
    if isinstance(data, dict) and data.get("problems"):
        problem = "; ".join(f"{k}: {str(v).splitlines()[0]}" for k, v in data["problems"].items())
    return data, problem


def _cell(value: float | None) -> str:
    return f"{value:10.2f}" if value is not None else "         -"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--table-only", action="store_true",
                        help="print the table from the benchmarks' last JSON, run nothing")
    parser.add_argument("--tile-step", type=float, default=0.5,
                        help="tile step of the whole-body benchmark (nnU-Net's default 0.5)")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    rows: list[Row] = []
    problems: dict[str, str] = {}
    for name in args.only:
        if args.table_only:
            saved = OUT / f"{name}.json"
            data = json.loads(saved.read_text()) if saved.exists() else None
            problem = "" if data is not None else f"no {saved} (not run yet)"
        else:
            data, problem = run_bench(name, args.tile_step)
        if problem:
            problems[name] = problem
        if data is not None:
            try:
                rows.extend(READERS[name](data))
            except (KeyError, TypeError, ZeroDivisionError) as exc:
                problems[name] = f"incomplete results ({type(exc).__name__}: {exc})"
    print(f"\n{'stage':34s} {'segnode':>10s} {'peer':>10s} {'ratio':>8s}  {'target':16s} met  "
          "peer / note")
    for row in rows:
        ratio = f"{row.ratio:8.2f}" if row.ratio is not None else "       -"
        met = {True: "yes", False: "NO ", None: " - "}[row.met]
        note = f"{row.peer_name}" + (f"; {row.note}" if row.note else "")
        print(f"{row.stage:34s} {_cell(row.segnode)} {_cell(row.peer)} {ratio}  "
              f"{row.target:16s} {met}  {note}")
    for name, problem in problems.items():
        print(f"bench/{name}.py: {problem}")
    (OUT / "summary.json").write_text(json.dumps(
        {"rows": [{**asdict(r), "ratio": r.ratio} for r in rows], "problems": problems},
        indent=2))
    print(f"\nwritten: {OUT / 'summary.json'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
