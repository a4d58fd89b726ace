"""Handlers of ``segnode corrections import|list`` and ``segnode dataset export``."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

import pydicom

from dicom_io.seg_reading import SEGMENTATION_SOP_CLASSES
from model.store import ModelStore
from node.catalogue import Catalogue
from node.config import NodeConfig, load_config
from node.corrections import CorrectionIntake
from node.dataset_export import ExportFilter, export_dataset, parse_day
from node.node_commands import config_path
from node.receiver import Receiver, StoreStatus
from node.spool import Quarantine, Spool
from segnode_errors import InputRejected

__all__ = ["corrections", "dataset"]

logger = logging.getLogger("segnode")


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def corrections(args: argparse.Namespace) -> int:
    """``segnode corrections import DIR`` or ``segnode corrections list``."""
    config = load_config(config_path(args))
    catalogue = Catalogue(config.database_url)
    try:
        if args.corrections_command == "import":
            return _import(config, catalogue, Path(args.folder))
        for row in catalogue.list_corrections(limit=args.limit):
            _write(f"{row['id']:>5}  {row['state']:<14} job {row['job_id'] or '-':<5} "
                   f"{row['model'] or '-':<16} {row['reason']}")
        return 0
    finally:
        catalogue.close()


def _import(config: NodeConfig, catalogue: Catalogue, folder: Path) -> int:
    """Take in every DICOM-SEG under ``folder`` as if received, and examine each at once."""
    if not folder.is_dir():
        raise InputRejected(f"{folder} is not a folder")
    quarantine = Quarantine(config.storage.quarantine_dir)
    receiver = Receiver(Spool(config.storage.spool_dir), quarantine, catalogue,
                        reprocess_late_instances=False, limits=config.limits)
    intake = CorrectionIntake(config, catalogue, quarantine)
    problems = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: say so and go on
            _write(f"{path}: skipped, not a DICOM file")
            continue
        if str(header.get("SOPClassUID", "")) not in SEGMENTATION_SOP_CLASSES:
            _write(f"{path}: skipped, not a DICOM-SEG")
            continue
        data = path.read_bytes()
        status = receiver.receive(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)),
                                  "IMPORT")
        if status != StoreStatus.SUCCESS:
            _write(f"{path}: not stored (status 0x{status:04X}, see the quarantine)")
            problems += 1
            continue
        instance = catalogue.instance(str(header.SOPInstanceUID))
        outcome = intake.examine(instance)
        if outcome is None:
            _write(f"{path}: stored; the node is examining it (segnode corrections list)")
            continue
        _write(f"{path}: correction {outcome.correction_id} {outcome.state}: {outcome.reason}")
        problems += outcome.state in ("quarantined", "failed")
    return 1 if problems else 0


def dataset(args: argparse.Namespace) -> int:
    """``segnode dataset export --model PACK --out DIR``: the nnU-Net v2 raw dataset."""
    config = load_config(config_path(args))
    table = ModelStore(config.storage.models_dir).resolve(args.model).labels
    wanted = ExportFilter(model=args.model, since=parse_day(args.since),
                          until=parse_day(args.until, end=True), modality=args.modality,
                          min_corrected_structures=args.min_corrected)
    catalogue = Catalogue(config.database_url)
    try:
        summary = export_dataset(catalogue, table, wanted, Path(args.out),
                                 manifest=Path(args.manifest) if args.manifest else None)
    finally:
        catalogue.close()
    _write(f"{summary.cases} case(s) ({summary.modality}) written to {summary.folder}; "
           f"manifest (site only, links cases to studies): {summary.manifest}")
    return 0
