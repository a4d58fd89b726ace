"""The full pipeline on the real CT of ../shared/data/totalsegmentator."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.dicom_io.conftest import shared_data_dir
from tests.node.conftest import run_cli


@pytest.fixture(scope="module")
def real_ct_run(tmp_path_factory: pytest.TempPathFactory):
    data = shared_data_dir()
    if data is None:
        pytest.skip("real data absent: set SEGNODE_SHARED_DATA or provide <repo>/../shared/data")
    root = tmp_path_factory.mktemp("real_ct")
    series = data / "totalsegmentator" / "example_ct_dicom"
    result = run_cli("segment", series, "--out", root / "out", "--device", "cpu",
                     "--report", root / "run.json", "--models-dir", root / "models")
    return data, series, root, result


def test_real_ct_runs_and_labels_lie_on_the_reference_grid(real_ct_run) -> None:
    """Our label map has the grid of TotalSegmentator's reference segmentation.

    The reference was made on dcm2niix's NIfTI of this series; equal shape and
    affine (both RAS in NIfTI) prove the reader's geometry end to end,
    whatever the demo model finds on a real CT.
    """
    data, series, root, result = real_ct_run
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads((root / "run.json").read_text())["results"]
    assert entry["status"] == "done"
    ours = nib.load(root / "out" / entry["key"] / "labels.nii.gz")
    reference = nib.load(data / "totalsegmentator" / "example_seg_dicom.nii.gz")
    ours_canonical = nib.as_closest_canonical(ours)
    ref_canonical = nib.as_closest_canonical(reference)
    assert ours_canonical.shape == ref_canonical.shape
    np.testing.assert_allclose(ours_canonical.affine, ref_canonical.affine, atol=1e-3)


def test_real_ct_seg_references_the_jpeg2000_source(real_ct_run) -> None:
    _, series, root, result = real_ct_run
    (entry,) = json.loads((root / "run.json").read_text())["results"]
    seg_path = root / "out" / entry["key"] / "seg.dcm"
    table = json.loads((root / "out" / entry["key"] / "volumes.json").read_text())
    assert seg_path.exists() == bool(table["structures"])
    if not seg_path.exists():
        pytest.fail("the demo model found no structure on the real CT: no SEG to check")
    seg = pydicom.dcmread(seg_path)
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                   for p in series.rglob("*") if p.is_file()}
    referenced = {item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= source_uids and referenced


def test_real_mr_nifti_labels_lie_on_the_input_grid(tmp_path) -> None:
    """NIfTI input: the label map comes back on the input's own grid, untouched."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("real data absent: set SEGNODE_SHARED_DATA or provide <repo>/../shared/data")
    image = data / "totalsegmentator" / "example_mr_sm.nii.gz"
    result = run_cli("segment", image, "--out", tmp_path / "out", "--device", "cpu",
                     "--models-dir", tmp_path / "models")
    assert result.returncode == 0, result.stderr[-3000:]
    ours = nib.load(tmp_path / "out" / "example_mr_sm" / "labels.nii.gz")
    source = nib.load(image)
    assert ours.shape == source.shape[:3]
    np.testing.assert_allclose(ours.affine, source.affine, atol=1e-4)
