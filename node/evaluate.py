"""``segnode evaluate PRED GT``: the correction metrics for research users, as a CSV.

PRED and GT are each a NIfTI label map, a DICOM-SEG file, or a folder of
them paired by case name (the file name without ``.nii.gz``, ``.nii`` or
``.dcm``). NIfTI values are the label table's values; SEG segments are
mapped to them by codes and laterality, as corrections are. The grid is the
NIfTI side's (the reference's when both are NIfTI, and then they must
match); two SEGs are compared on the union of their frames' extents. Metrics
and conventions: :mod:`model.evaluation`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_io.nifti import read_nifti
from dicom_io.seg_reading import read_seg, seg_labels_on
from dicom_io.stitch import stitched_grid
from model.evaluation import StructureScore, score
from model.labels import MRSEGMENTATOR, LabelTable
from model.store import ModelStore
from node.exports import segment_infos
from node.outputs import render_csv
from node.settings import default_models_dir
from segnode_errors import InputRejected

__all__ = ["EVALUATION_COLUMNS", "evaluate", "evaluate_pair", "pair_cases", "score_rows"]

logger = logging.getLogger(__name__)

_SUFFIXES = (".nii.gz", ".nii", ".dcm")
#: The columns of the CSV, one row per case and structure.
EVALUATION_COLUMNS = ("case", "label", "structure", "dice", "hd95_mm", "volume_ml",
                      "reference_volume_ml", "volume_change_ml", "volume_change_pct",
                      "one_component", "reference_one_component")


def _case_name(path: Path) -> str:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def pair_cases(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction, reference) for two files, or for two folders paired by case name.

    Raises
    ------
    InputRejected
        If a path is missing, one is a folder and the other not, or no case pairs.
    """
    for path in (pred, gt):
        if not path.exists():
            raise InputRejected(f"{path} does not exist")
    if pred.is_dir() != gt.is_dir():
        raise InputRejected(f"{pred} and {gt} must both be files or both be folders")
    if not pred.is_dir():
        return [(_case_name(gt), pred, gt)]

    def files(folder: Path) -> dict[str, Path]:
        return {_case_name(p): p for p in sorted(folder.iterdir())
                if p.is_file() and p.name.endswith(_SUFFIXES)}

    predicted, reference = files(pred), files(gt)
    cases = sorted(set(predicted) & set(reference))
    for case in sorted(set(predicted) ^ set(reference)):
        side = gt if case in predicted else pred
        logger.warning("case %s has no counterpart in %s: left out", case, side)
    if not cases:
        raise InputRejected(f"no case of {pred} has a counterpart of the same name in {gt}")
    return [(case, predicted[case], reference[case]) for case in cases]


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii.gz", ".nii"))


def _seg(path: Path) -> Dataset:
    return read_seg(path, name=str(path))


def _seg_volume(path: Path) -> hd.Volume:
    """A SEG's frames as a volume of segment numbers, on its own grid."""
    ds = _seg(path)
    volume = hd.seg.Segmentation.from_dataset(ds, copy=False).get_volume(
        combine_segments=True, skip_overlap_checks=True, dtype=np.uint16)
    if volume is None:
        raise InputRejected(f"{path}: the SEG has no frames")
    return volume


def evaluate_pair(pred: Path, gt: Path, table: LabelTable,
                  labels: Sequence[int] | None = None) -> list[StructureScore]:
    """Score one prediction against its reference (NIfTI or DICOM-SEG each)."""
    infos = segment_infos(table)
    if _is_nifti(gt) or _is_nifti(pred):
        grid = read_nifti(gt if _is_nifti(gt) else pred, dtype=np.uint16)
    else:
        affine, shape = stitched_grid([_seg_volume(gt), _seg_volume(pred)])
        grid = hd.Volume(np.zeros(shape, dtype=np.uint16), affine, coordinate_system="PATIENT")

    def on_grid(path: Path) -> hd.Volume:
        if _is_nifti(path):
            volume = read_nifti(path, dtype=np.uint16)
            if volume.spatial_shape != grid.spatial_shape or not np.allclose(
                    volume.affine, grid.affine, atol=1e-3):
                raise InputRejected(f"{path} is not on the grid of {gt}")
            return volume
        labels_on, match = seg_labels_on(_seg(path), grid, infos, name=str(path))
        for coding, why in match.unmapped:
            logger.warning("%s: %s maps to no label (%s)", path, coding.describe(), why)
        return labels_on

    return score(on_grid(pred), on_grid(gt), table, labels=labels)


def score_rows(case: str, scores: Sequence[StructureScore]) -> list[dict[str, object]]:
    """CSV rows of one case (empty cells for undefined values)."""

    def cell(value: float | bool | None, digits: int = 4) -> object:
        if value is None:
            return ""
        return round(value, digits) if isinstance(value, float) else value

    return [{"case": case, "label": s.label, "structure": s.name, "dice": cell(s.dice),
             "hd95_mm": cell(s.hd95_mm, 2), "volume_ml": cell(s.volume_ml, 3),
             "reference_volume_ml": cell(s.reference_volume_ml, 3),
             "volume_change_ml": cell(s.volume_change_ml, 3),
             "volume_change_pct": cell(s.volume_change_pct, 2),
             "one_component": cell(s.connected),
             "reference_one_component": cell(s.reference_connected)} for s in scores]


def _table(args: argparse.Namespace) -> LabelTable:
    if args.model is None:
        return MRSEGMENTATOR
    return ModelStore(args.models_dir or default_models_dir()).resolve(args.model).labels


def _labels(table: LabelTable, wanted: Sequence[str] | None) -> list[int] | None:
    if not wanted:
        return None
    values = []
    for item in wanted:
        if item.isdigit() and int(item) in table:
            values.append(int(item))
            continue
        try:
            values.append(table.by_name(item).index)
        except KeyError:
            raise InputRejected(f"--labels: {item!r} is no label of table {table.name}") from None
    return values


def evaluate(args: argparse.Namespace) -> int:
    """Handler of ``segnode evaluate``: one CSV row per case and structure, a summary on stderr."""
    table = _table(args)
    labels = _labels(table, args.labels)
    rows: list[dict[str, object]] = []
    per_structure: dict[str, list[StructureScore]] = {}
    for case, pred, gt in pair_cases(Path(args.pred), Path(args.gt)):
        scores = evaluate_pair(pred, gt, table, labels)
        rows.extend(score_rows(case, scores))
        for s in scores:
            per_structure.setdefault(s.name, []).append(s)
    text = render_csv(rows, EVALUATION_COLUMNS)
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    sys.stderr.write(f"{'structure':<32} {'cases':>5} {'mean Dice':>9} {'median HD95':>11}\n")
    for name, scores in per_structure.items():
        distances = [s.hd95_mm for s in scores if s.hd95_mm is not None]
        median = f"{statistics.median(distances):.2f}" if distances else "-"
        sys.stderr.write(f"{name:<32} {len(scores):>5} "
                         f"{statistics.fmean(s.dice for s in scores):>9.4f} {median:>11}\n")
    return 0
