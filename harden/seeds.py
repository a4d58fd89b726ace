"""The files a fuzz campaign starts from: the project's phantoms and real scanner files.

Phantom seeds are written with :func:`dicom_io.phantom_series.write_series`
(small grids so that one input takes milliseconds): an MR and a CT series
and a whole-body study of three overlapping MR stations. Real seeds are
taken from ``../shared/data`` when it is there (``$SEGNODE_SHARED_DATA``
overrides): the transfer-syntax set of dcm_qa_ts (JPEG, JPEG 2000, RLE,
deflate, big endian) and enhanced multi-frame MR from Siemens and Philips.
Configuration seeds are the shipped ``config.yaml`` and ``deploy/config.yaml``.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np

from dicom_io.content import AlgorithmInfo
from dicom_io.phantom_series import write_series

__all__ = ["Seeds", "build_seeds", "shared_data_dir", "REPO"]

REPO = Path(__file__).resolve().parent.parent
_REAL_FILES = ("dcm_qa_ts/In", "dicom2nifti/siemens_multiframe/anatomical/001",
               "dicom2nifti/philips_enhanced/anatomical/001")
_PATIENT = ("Fuzz^Patient", "FUZZ-PID-1", "19500101")


@dataclass
class Seeds:
    """Seed inputs by target: files, series (lists of files), studies, configuration texts."""

    instances: list[bytes] = field(default_factory=list)
    series: list[list[bytes]] = field(default_factory=list)
    studies: list[list[list[bytes]]] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    #: DICOM-SEGs (BINARY and LABELMAP) of the MR seed, and its grid (as corrections come).
    segs: list[bytes] = field(default_factory=list)
    seg_grid: hd.Volume | None = None
    real_files: int = 0


def shared_data_dir() -> Path | None:
    """``$SEGNODE_SHARED_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("SEGNODE_SHARED_DATA")
    candidate = Path(env) if env else (REPO / ".." / "shared" / "data").resolve()
    return candidate if candidate.is_dir() else None


def _volume(shape: tuple[int, int, int], spacing: float, origin_z: float,
            seed: int) -> hd.Volume:
    rng = np.random.default_rng(seed)
    array = rng.uniform(0, 800, size=shape).astype(np.float32)
    array[:, shape[1] // 4: 3 * shape[1] // 4, shape[2] // 4: 3 * shape[2] // 4] += 1500
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-shape[2] * spacing / 2, -shape[1] * spacing / 2, origin_z)
    # Volume affines map (k, j, i); columns are the slice, row and column steps.
    affine[:3, :3] = np.array([[0, 0, spacing], [0, spacing, 0], [spacing, 0, 0]])
    return hd.Volume(array, affine, coordinate_system="PATIENT",
                     frame_of_reference_uid=hd.UID())


def _written(volume: hd.Volume, folder: Path, **kwargs: object) -> list[bytes]:
    name, patient_id, birth = _PATIENT
    paths = write_series(volume, folder, patient_name=name, patient_id=patient_id,
                         patient_birth_date=birth, **kwargs)
    return [p.read_bytes() for p in paths]


def _segs(folder: Path) -> tuple[list[bytes], hd.Volume]:
    """segnode's SEGs of the MR seed (liver and both kidneys), BINARY and LABELMAP."""
    from dicom_io.scan import find_series
    from dicom_io.seg import build_seg
    from dicom_io.series import read_series
    from model.labels import MRSEGMENTATOR
    from node.exports import segment_infos

    [files] = find_series(folder)
    read = read_series(files).volumes[0]
    labels = np.zeros(read.volume.spatial_shape, dtype=np.uint16)
    labels[1:4, 4:12, 4:8] = 5
    labels[2:5, 5:9, 9:11] = 2
    labels[1:3, 9:12, 12:14] = 3
    grid = read.volume.with_array(labels)
    infos = segment_infos(MRSEGMENTATOR)
    algorithm = AlgorithmInfo(name="mrsegmentator", version="1.0", weights_sha256="0" * 64)
    segs = []
    for kind in ("binary", "labelmap"):
        buffer = io.BytesIO()
        build_seg(grid, list(read.source), infos, algorithm, seg_type=kind).save_as(
            buffer, enforce_file_format=True)
        segs.append(buffer.getvalue())
    return segs, grid.with_array(np.zeros_like(labels))


def build_seeds(*, with_real_data: bool = True) -> Seeds:
    """Write the phantom seeds (in a temporary folder) and gather the real ones."""
    seeds = Seeds()
    with tempfile.TemporaryDirectory(prefix="segnode-seeds-") as tmp:
        root = Path(tmp)
        mr = _written(_volume((5, 16, 16), 4.0, 0.0, 1), root / "mr", uid_seed="fuzz-mr")
        ct = _written(_volume((5, 16, 16), 4.0, 0.0, 2), root / "ct", modality="CT",
                      uid_seed="fuzz-ct")
        seeds.series += [mr, ct]
        study = hd.UID()
        stations = [
            _written(_volume((6, 12, 12), 8.0, 200.0 - 36.0 * n, 10 + n), root / f"s{n}",
                     study_uid=study, series_number=n + 1,
                     series_description=f"WB Dixon station {n + 1} opp", uid_seed=f"st{n}")
            for n in range(3)
        ]
        seeds.studies.append(stations)
        seeds.instances += [mr[0], mr[2], ct[1]]
        seeds.segs, seeds.seg_grid = _segs(root / "mr")
    data = shared_data_dir() if with_real_data else None
    if data is not None:
        for folder in _REAL_FILES:
            for path in sorted((data / folder).glob("*.dcm")):
                if path.stat().st_size <= 4 * 2**20:
                    blob = path.read_bytes()
                    seeds.instances.append(blob)
                    seeds.series.append([blob])
                    seeds.real_files += 1
    seeds.configs = [(REPO / name).read_text() for name in ("config.yaml", "deploy/config.yaml")
                     if (REPO / name).is_file()]
    return seeds
