"""DICOM-SEG writing: segnode's BINARY and LABELMAP SEG next to dcmqi's itkimage2segimage.

What is measured
----------------
An axial MR series of 300 slices of 256 x 256 (1.5 x 1.5 x 3 mm, classic
single-frame files, written once into the work folder) and a label volume on
its grid with 40 structures (ellipsoids spread over the volume, each over
about a third of the slices). The cases, each in a fresh process:

- ``segnode BINARY`` / ``segnode LABELMAP``: :func:`dicom_io.seg.build_seg`
  plus encoding the SEG to bytes, the source headers and the labels already
  in memory (as in the pipeline, which has read them to segment);
- ``segnode BINARY, reading inputs``: the same with reading the 300 source
  files (headers only) and the label NIfTI inside the timing, which is what
  dcmqi's figure includes;
- ``peer: dcmqi itkimage2segimage BINARY``: dcmqi's converter (PyPI
  ``dcmqi``, installed by this script into its own venv under the work
  folder) from the label NIfTI, the series folder and a metadata JSON with
  the same 40 segments, writing the SEG to a file.

segnode's time is ``time.perf_counter`` around the second call in its
process (the first warms it up, as a long-running node is: highdicom reads
its tables of the standard on first use); its peak memory is
the high-water mark of the resident set (``/proc/self/clear_refs`` reset
after the inputs are built) minus the resident set before the call. dcmqi's
time is the wall time of its process and its peak memory its ``ru_maxrss``.
Cases are interleaved, run R times; the table shows medians, and is also
written as JSON (``--json``).

Usage (about 2 minutes on 2 cores with R=3, plus the dcmqi install the first
time): ``.venv/bin/python bench/seg_write.py [--repeat R] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import (  # noqa: E402
    BenchError,
    reset_peak_rss,
    run_json_child,
    status_mib,
)

WORK = REPO / ".bench" / "seg_write"
SHAPE = (300, 256, 256)
SPACING = (3.0, 1.5, 1.5)
STRUCTURES = 40
DCMQI = "dcmqi==1.5.7"
CASES = ("segnode BINARY", "segnode LABELMAP", "segnode BINARY, reading inputs",
         "peer: dcmqi itkimage2segimage BINARY")


def _labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    labels = np.zeros(SHAPE, np.uint8)
    for value in range(1, STRUCTURES + 1):
        centre = rng.uniform((60, 40, 40), (240, 216, 216))
        radii = rng.uniform((30, 10, 10), (60, 30, 30))
        inside = (((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
                  + ((i - centre[2]) / radii[2]) ** 2) <= 1.0
        labels[inside] = value
    return labels


def _segments() -> list:
    from dicom_io.content import SegmentInfo

    return [SegmentInfo(v, f"structure_{v}", ("10200004", "SCT", "Liver"),
                        rgb=((v * 53) % 256, (v * 97) % 256, (v * 151) % 256))
            for v in range(1, STRUCTURES + 1)]


def write_inputs() -> None:
    """The series, the label NIfTI and dcmqi's metadata, once, into the work folder."""
    import highdicom as hd

    from dicom_io.nifti import write_label_nifti
    from dicom_io.phantom_series import write_series

    series = WORK / "series"
    if (WORK / "inputs.done").is_file():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    affine = np.array([[0, 0, SPACING[2], -192.0], [0, SPACING[1], 0, -192.0],
                       [SPACING[0], 0, 0, -450.0], [0, 0, 0, 1.0]])
    image = hd.Volume((rng.normal(300, 40, SHAPE)).astype(np.float32).clip(0), affine,
                      "PATIENT", frame_of_reference_uid="1.2.826.0.1.3680043.10.511.9")
    write_series(image, series, modality="MR", uid_seed="bench-seg-write",
                 series_description="bench seg write")
    labels = hd.Volume(_labels(), affine, "PATIENT",
                       frame_of_reference_uid="1.2.826.0.1.3680043.10.511.9")
    write_label_nifti(labels, WORK / "labels.nii.gz")
    meta = {"ContentCreatorName": "bench", "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1", "SeriesDescription": "bench", "SeriesNumber": "300",
            "InstanceNumber": "1", "BodyPartExamined": "",
            "segmentAttributes": [[{
                "labelID": s.number, "SegmentLabel": s.label,
                "SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": "bench",
                "recommendedDisplayRGBValue": list(s.rgb),
                "SegmentedPropertyCategoryCodeSequence": {
                    "CodeValue": "91723000", "CodingSchemeDesignator": "SCT",
                    "CodeMeaning": "Anatomical Structure"},
                "SegmentedPropertyTypeCodeSequence": {
                    "CodeValue": "10200004", "CodingSchemeDesignator": "SCT",
                    "CodeMeaning": "Liver"}} for s in _segments()]]}
    (WORK / "meta.json").write_text(json.dumps(meta))
    (WORK / "inputs.done").write_text("ok")


def dcmqi_tool() -> Path:
    """itkimage2segimage from dcmqi in its own venv (created on first use)."""
    venv = WORK / "dcmqi-venv"
    tool = venv / "bin" / "itkimage2segimage"
    if not tool.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", DCMQI],
                                capture_output=True, text=True)
        if result.returncode != 0 or not tool.is_file():
            raise BenchError(f"cannot install {DCMQI}: {result.stderr[-1500:]}")
    return tool


# -- one case in a fresh process ---------------------------------------------------------


def _read_inputs() -> tuple[list, object]:
    import pydicom

    from dicom_io.nifti import read_nifti

    paths = sorted((WORK / "series").glob("*.dcm"))
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    labels = read_nifti(WORK / "labels.nii.gz")
    labels = labels.with_array(labels.array.astype(np.uint8))
    return sources, labels


def _segnode(seg_type: str, read_inside: bool) -> dict:
    from io import BytesIO

    from dicom_io.content import AlgorithmInfo
    from dicom_io.seg import build_seg

    algorithm = AlgorithmInfo(name="bench", version="1", weights_sha256="0" * 64)
    segments = _segments()
    sources, labels = _read_inputs()
    # Warm up as the long-running node is: highdicom loads its tables of the
    # standard on first use. The timed call is the second.
    build_seg(labels, sources, segments, algorithm, seg_type=seg_type)
    if read_inside:
        sources, labels = None, None
    before = reset_peak_rss()
    start = time.perf_counter()
    if read_inside:
        sources, labels = _read_inputs()
    seg = build_seg(labels, sources, segments, algorithm, seg_type=seg_type)
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": status_mib("VmHWM") - before,
            "bytes": buffer.tell(), "segments": len(seg.SegmentSequence)}


def _dcmqi() -> dict:
    tool = dcmqi_tool()
    out = WORK / "dcmqi-seg.dcm"
    out.unlink(missing_ok=True)
    argv = [str(tool), "--inputImageList", str(WORK / "labels.nii.gz"), "--inputDICOMDirectory",
            str(WORK / "series"), "--outputDICOM", str(out), "--inputMetadata",
            str(WORK / "meta.json"), "--segmentationType", "binary"]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or not out.is_file():
        raise BenchError(f"itkimage2segimage failed ({result.returncode}): "
                         f"{(result.stdout + result.stderr)[-1500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "bytes": out.stat().st_size,
            "segments": STRUCTURES}


def run_case(name: str) -> dict:
    """Measure one case in this process."""
    if name == "segnode BINARY":
        return _segnode("binary", read_inside=False)
    if name == "segnode LABELMAP":
        return _segnode("labelmap", read_inside=False)
    if name == "segnode BINARY, reading inputs":
        return _segnode("binary", read_inside=True)
    return _dcmqi()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--run", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.run:
        print(json.dumps(run_case(args.run)))
        return 0
    write_inputs()
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    problems = {}
    for _ in range(args.repeat):
        for name in CASES:
            if name in problems:
                continue
            try:
                results[name].append(run_json_child(__file__, name, timeout=1800))
            except BenchError as exc:
                problems[name] = str(exc)
    rows = []
    peer = results[CASES[-1]]
    peer_s = statistics.median(r["seconds"] for r in peer) if peer else None
    print(f"DICOM-SEG of {STRUCTURES} segments on {SHAPE[0]} slices of {SHAPE[1]} x {SHAPE[2]}"
          f", median of {args.repeat}")
    print(f"{'case':40s} {'seconds':>8s} {'peak MiB':>9s} {'MB out':>8s} {'vs dcmqi':>9s}")
    for name in CASES:
        runs = results[name]
        if not runs:
            print(f"{name:40s} not measured: {problems.get(name, 'no result')}")
            continue
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        ratio = f"{seconds / peer_s:8.2f}x" if peer_s else "       -"
        print(f"{name:40s} {seconds:8.2f} {peak:9.0f} {runs[0]['bytes'] / 1e6:8.1f} {ratio}")
        rows.append({"case": name, "seconds": seconds, "peak_mib": peak,
                     "bytes": runs[0]["bytes"], "ratio_to_dcmqi": seconds / peer_s
                     if peer_s else None})
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
