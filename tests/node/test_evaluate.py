"""``segnode evaluate``: the correction metrics on NIfTI and DICOM-SEG pairs, as a CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from dicom_io.nifti import write_label_nifti
from dicom_io.seg import build_seg
from tests.dicom_io.test_seg import (
    ALGO,
    SEGMENTS,
    make_series,
    to_bytes_and_back,
    volume_from_slices,
)
from tests.node.conftest import run_cli


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_folders_of_nifti_and_seg_pairs_give_one_row_per_case_and_structure(
        tmp_path: Path) -> None:
    sources, by_uid = make_series(reverse=True)
    reference = volume_from_slices(sources, by_uid)
    moved = reference.array.copy()
    moved[moved == 2] = 0
    moved[np.roll(reference.array == 2, 1, axis=2)] = 2  # right kidney one column over
    prediction = reference.with_array(moved)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    write_label_nifti(prediction, pred / "case1.nii.gz")
    write_label_nifti(reference, gt / "case1.nii.gz")
    # case2: both sides DICOM-SEG (segnode's own table values: 1, 2, 3, 5).
    for folder, volume in ((pred, prediction), (gt, reference)):
        to_bytes_and_back(build_seg(volume, sources, SEGMENTS, ALGO)).save_as(folder / "case2.dcm")
    write_label_nifti(reference, gt / "only-in-gt.nii.gz")
    out = tmp_path / "metrics.csv"
    result = run_cli("evaluate", pred, gt, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "case only-in-gt has no counterpart" in result.stderr
    rows = _rows(out.read_text())
    assert [(r["case"], r["structure"]) for r in rows] == [
        (case, name) for case in ("case1", "case2")
        for name in ("spleen", "right_kidney", "left_kidney", "liver")]
    a, b = moved == 2, reference.array == 2
    dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    for case in ("case1", "case2"):
        kidney = next(r for r in rows if r["case"] == case and r["structure"] == "right_kidney")
        assert float(kidney["dice"]) == pytest.approx(dice, abs=1e-4)
        assert float(kidney["hd95_mm"]) == pytest.approx(0.7, abs=0.01)  # one column of 0.7 mm
        spleen = next(r for r in rows if r["case"] == case and r["structure"] == "spleen")
        assert (spleen["dice"], spleen["hd95_mm"], spleen["one_component"]) == ("1.0", "0.0", "")
    assert "right_kidney" in result.stderr and "mean Dice" in result.stderr


def test_labels_restrict_the_rows_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    sources, by_uid = make_series()
    labels = volume_from_slices(sources, by_uid)
    write_label_nifti(labels, tmp_path / "a.nii.gz")
    result = run_cli("evaluate", tmp_path / "a.nii.gz", tmp_path / "a.nii.gz",
                     "--labels", "liver", "1")
    assert result.returncode == 0, result.stderr
    assert [r["structure"] for r in _rows(result.stdout)] == ["spleen", "liver"]
    wrong = run_cli("evaluate", tmp_path / "a.nii.gz", tmp_path / "a.nii.gz", "--labels", "lver")
    assert wrong.returncode == 2
    assert "--labels: 'lver' is no label of table mrsegmentator" in wrong.stderr
