"""Handlers of the ``segnode`` subcommands: arguments in, exit status out."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from node.model_commands import models_dir_of
from node.outputs import atomic_write_bytes
from node.runner import RunSummary, run_segment
from node.settings import RunSettings

__all__ = ["segment", "demo"]

logger = logging.getLogger("segnode")


def _run_settings(args: argparse.Namespace) -> RunSettings:
    stations: dict[str, object] = {"enabled": not args.no_stations,
                                   "segment_each_contrast": args.each_contrast,
                                   "write_stitched": args.write_stitched}
    if args.dixon_contrast:
        stations["segment_contrast"] = args.dixon_contrast
    return RunSettings.build(
        models=tuple(args.model or ()),
        models_dir=models_dir_of(args),
        device=args.device,
        seg_type=args.seg_type,
        folds=tuple(args.folds) if args.folds else None,
        tile_step_size=args.tile_step,
        precision=args.precision,
        compile=args.compile,
        stations=stations,
        reports=tuple(args.reports or ()),
    )


def _print_summary(summary: RunSummary) -> None:
    out = sys.stdout
    for result in summary.results:
        where = f" -> {result.folder}" if result.folder else ""
        reason = f" ({result.reason})" if result.reason else ""
        out.write(f"{result.status:8s} {result.key}{where}{reason}\n")
        for row in result.structures:
            mean = row.get("mean_intensity")
            mean_text = f"  mean {mean:8.1f} {row['intensity_unit']}" if mean is not None else ""
            edge = "  (touches FOV edge)" if row.get("touches_fov_edge") else ""
            out.write(f"    {row['structure']:32s} {row['volume_ml']:10.1f} ml{mean_text}{edge}\n")
    counts: dict[str, int] = {}
    for result in summary.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    out.write(f"{parts} in {summary.seconds:.1f} s; outputs in {summary.output}\n")


def _finish(summary: RunSummary, report: Path | None) -> int:
    _print_summary(summary)
    if report is not None:
        atomic_write_bytes(report, json.dumps(summary.to_dict(), indent=2).encode())
        logger.info("run report written to %s", report)
    return 1 if summary.failed else 0


def segment(args: argparse.Namespace) -> int:
    """``segnode segment INPUT --out OUTDIR``."""
    settings = _run_settings(args)
    return _finish(run_segment(args.input, args.out, settings), args.report)


def demo(args: argparse.Namespace) -> int:
    """``segnode demo``: write a phantom MR series, then segment it like any input."""
    from node.demo import write_demo_series

    settings = _run_settings(args)
    input_dir = args.out / "input"
    write_demo_series(input_dir)
    logger.info("phantom MR series written to %s", input_dir)
    return _finish(run_segment(input_dir, args.out / "output", settings), args.report)
