"""Handlers of the ``segnode`` subcommands: arguments in, exit status out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node.outputs import atomic_write_bytes
from node.runner import RunSummary, run_segment
from node.settings import RunSettings, default_models_dir

if TYPE_CHECKING:
    from model.store import ModelStore

__all__ = ["segment", "demo", "models"]

logger = logging.getLogger("segnode")


def _models_dir(args: argparse.Namespace) -> Path:
    """``--models-dir``, else ``SEGNODE_MODELS_DIR``, else the per-user default."""
    if args.models_dir is not None:
        return args.models_dir
    from_env = os.environ.get("SEGNODE_MODELS_DIR")
    return Path(from_env) if from_env else default_models_dir()


def _run_settings(args: argparse.Namespace) -> RunSettings:
    stations: dict[str, object] = {"enabled": not args.no_stations,
                                   "segment_each_contrast": args.each_contrast,
                                   "write_stitched": args.write_stitched}
    if args.dixon_contrast:
        stations["segment_contrast"] = args.dixon_contrast
    return RunSettings.build(
        models=tuple(args.model or ()),
        models_dir=_models_dir(args),
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


def models(args: argparse.Namespace) -> int:
    """``segnode models list|available|show|install|add|verify``."""
    from model.packs import verify_checkpoints
    from model.store import ModelStore

    store = ModelStore(_models_dir(args))
    out = sys.stdout
    if args.models_command == "install":
        pack = store.install(args.source, sha256=args.sha256, name=args.name,
                             from_path=args.from_path)
        out.write(f"installed {pack.name} {pack.version} in {pack.folder}\n"
                  f"licence: {pack.licence or 'unknown'}\n")
        return 0
    if args.models_command == "add":
        pack = store.add(args.name, args.nnunet_folder, args.labels)
        out.write(f"added {pack.name} ({len(pack.labels)} labels) in {pack.folder}\n")
        return 0
    if args.models_command == "verify":
        packs = [store.resolve(name) for name in args.names] or store.list()
        failed = 0
        for pack in packs:
            problems = verify_checkpoints(pack)
            failed += bool(problems)
            count = sum(len(m.folds) for m in pack.models)
            for line in problems or [f"{pack.name}: {count} checkpoint(s) verified"]:
                out.write(line + "\n")
        return 1 if failed else 0
    if args.models_command == "available":
        _write_available(store)
        return 0
    if args.models_command == "show":
        _write_pack(store, args.name)
        return 0
    for pack in store.list():
        out.write(
            f"{pack.name:26s} {pack.version:14s} {len(pack.models)} model(s) folds "
            f"{','.join(map(str, pack.folds)):10s} {len(pack.labels.structures):3d} labels  "
            f"sha256 {pack.weights_sha256[:12]} archive {pack.archive_check or 'built-in':8s} "
            f"{'/'.join(pack.modalities) or 'any':5s} "
            f"licence {pack.licence or 'unknown'}  {pack.folder}\n"
        )
    return 0


def _write_available(store: ModelStore) -> None:
    from model.descriptors import descriptors

    installed = {p.name for p in store.list()}
    for item in descriptors().values():
        fetch = "download" if all(a.url for a in item.archives) else "manual download"
        state = "installed" if item.name in installed else fetch
        sums = "sha256 pinned" if all(a.sha256 for a in item.archives) else "no published sha256"
        sys.stdout.write(f"{item.name:26s} {item.version:14s} {'/'.join(item.modalities):5s} "
                         f"{len(item.labels):3d} labels  {state:15s} {sums:20s} "
                         f"licence {item.licence}\n")


def _write_pack(store: ModelStore, name: str) -> None:
    """Print a pack's description: installed state, models, settings, labels and caveats."""
    from model.descriptors import descriptor
    from segnode_errors import ModelError

    item = descriptor(name)
    try:
        pack = store.resolve(name)
    except ModelError:
        if item is None:
            raise
        pack = None
    out = sys.stdout
    if pack is not None:
        out.write(f"{pack.name} {pack.version} installed in {pack.folder}\n"
                  f"weights sha256 {pack.weights_sha256}\n")
        for model in pack.models:
            out.write(f"  model {model.id}: folds {','.join(map(str, model.folds))}, "
                      f"trainer {model.trainer or 'as in its checkpoints'}\n")
        table, licence = pack.labels, pack.licence
        orientation, modalities = pack.input_orientation, pack.modalities
    else:
        assert item is not None
        out.write(f"{item.name} {item.version}: not installed\n")
        table, licence = item.label_table(), item.licence
        orientation, modalities = item.input_orientation, item.modalities
    out.write(f"licence {licence or 'unknown'}; input orientation {orientation}; "
              f"modalities {', '.join(modalities) or 'any'}\n")
    if item is not None:
        for archive in item.archives:
            out.write(f"  archive {archive.file}: {archive.url or 'manual download'} "
                      f"sha256 {archive.sha256 or 'not published'}\n")
        for device in ("cuda", "cpu"):
            settings = getattr(item.settings, device)
            out.write(f"  recommended on {device}: folds {settings.folds}, "
                      f"tile step {settings.tile_step_size}\n")
        if item.manual_download:
            out.write(f"  {item.manual_download}\n")
        for caveat in item.caveats:
            out.write(f"  caveat: {caveat}\n")
    for s in table.structures:
        side = f" {s.laterality}" if s.laterality else ""
        region = f" in {s.region.meaning} ({s.region.value})" if s.region else ""
        out.write(f"  {s.index:3d} {s.name:32s} {s.type_code.value:>11s} {s.type_code.meaning}"
                  f"{side}{region}  [{s.category.meaning}]  rgb {s.rgb}\n")
