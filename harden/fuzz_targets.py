"""What the fuzz campaigns feed: everything that parses what a peer or an admin sends.

Each target builds its input from the seeds and a ``random.Random`` (so
input ``n`` of a campaign can be rebuilt from its seed), runs the real code
on it and returns ``"accepted"`` or ``"rejected: <reason>"``. Anything else
is a finding: :class:`Finding` for a broken promise, or any other exception
escaping the code under test.

- ``receive``: the node's :class:`node.receiver.Receiver` on the data set as
  an SCP gets it (no file meta), decoded the way pynetdicom decodes it, with
  a real spool, quarantine and SQLite catalogue. Promise: Success with the
  row and the identical file, or Cannot Understand with a quarantine entry
  holding the bytes and a reason; and a good instance is still stored
  afterwards (the node keeps serving).
- ``series``: :func:`dicom_io.series.read_series` (geometry, pixel decoding,
  multi-frame functional groups) on a series folder with mutated files,
  with the node's voxel limit. Promise: volumes with finite affines and
  float32 arrays, or rejections with reasons; only ``SegnodeError`` escapes.
- ``stations``: a three-station whole-body study with mutated headers, read,
  grouped (:func:`dicom_io.stations.group_stations`) and stitched
  (:func:`dicom_io.stitch.stitch`). Promise as for ``series``.
- ``config``: :func:`node.config.load_config` on a mutated configuration.
  Promise: a configuration or ``ConfigError``.
- ``seg``: a mutated DICOM-SEG as a correction comes (:mod:`dicom_io.seg_reading`:
  segment codings, references, labels on the source grid mapped to the
  MRSegmentator table). Promise: a uint16 label map on the grid with the
  table's values only, a reason for every unmapped segment, or
  ``SegnodeError``.
"""

from __future__ import annotations

import io
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom.dsutils import decode

from harden.mutate import mutate_config, mutate_dicom
from harden.seeds import Seeds
from segnode_errors import SegnodeError

__all__ = ["Finding", "TARGETS", "Target", "FuzzInput"]


class Finding(Exception):
    """The code under test broke its promise for this input."""


@dataclass
class FuzzInput:
    """One generated input: its files (name -> bytes) and what was done to make it."""

    files: dict[str, bytes]
    mutations: list[str]

    def save(self, folder: Path) -> None:
        """Write the input's files into ``folder`` (a finding's record)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)


class Target:
    """A fuzz target: makes inputs and runs the code under test in ``workdir``."""

    name = ""

    def __init__(self, seeds: Seeds, workdir: Path, *, max_voxels: int = 500_000_000) -> None:
        self.seeds = seeds
        self.workdir = workdir
        self.max_voxels = max_voxels
        workdir.mkdir(parents=True, exist_ok=True)

    def make(self, rng: random.Random) -> FuzzInput:
        """The next input."""
        raise NotImplementedError

    def run(self, item: FuzzInput) -> str:
        """Run the code under test; ``accepted`` or ``rejected: ...``, else raise."""
        raise NotImplementedError


def _dataset_bytes(data: bytes) -> tuple[bytes, bool, bool]:
    """The data set after the file meta, and its encoding (implicit VR, little endian)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        start = 132 + 12 + int(ds.file_meta.get("FileMetaInformationGroupLength", 0))
        implicit = bool(syntax and syntax.is_implicit_VR)
        little = not syntax or syntax.is_little_endian
        return data[start:], implicit, little
    except Exception:  # noqa: BLE001 - unparsable meta: send the bytes as they are
        return data[132:] if data[128:132] == b"DICM" else data, False, True


class ReceiveTarget(Target):
    """The receiver's header indexing, spool, quarantine and catalogue."""

    name = "receive"

    def __init__(self, seeds: Seeds, workdir: Path, **kwargs: object) -> None:
        super().__init__(seeds, workdir, **kwargs)
        from node.catalogue import Catalogue
        from node.config import LimitsConfig
        from node.receiver import Receiver
        from node.spool import Quarantine, Spool

        self.catalogue = Catalogue(f"sqlite:///{workdir / 'catalogue.db'}")
        self.quarantine_root = workdir / "quarantine"
        self.receiver = Receiver(Spool(workdir / "spool"), Quarantine(self.quarantine_root),
                                 self.catalogue, limits=LimitsConfig())
        self.runs = 0

    def make(self, rng: random.Random) -> FuzzInput:
        data, names = mutate_dicom(rng.choice(self.seeds.instances), rng)
        return FuzzInput({"instance.dcm": data}, names)

    def _receive(self, data: bytes) -> tuple[int, bytes]:
        payload, implicit, little = _dataset_bytes(data)
        status = self.receiver.receive(payload, lambda: decode(io.BytesIO(payload), implicit,
                                                               little), "FUZZER")
        return status, payload

    def run(self, item: FuzzInput) -> str:
        from node.receiver import StoreStatus

        before = self.catalogue.list_quarantine(1)
        status, payload = self._receive(item.files["instance.dcm"])
        self.runs += 1
        if self.runs % 25 == 0:
            self._still_serving()
        if status == StoreStatus.SUCCESS:
            return "accepted"
        if status != StoreStatus.CANNOT_UNDERSTAND:
            raise Finding(f"status 0x{status:04X}: neither stored nor quarantined")
        entry = self.catalogue.list_quarantine(1)
        if not entry or entry == before or not entry[0]["reason"]:
            raise Finding("Cannot Understand without a quarantine entry and a reason")
        if Path(entry[0]["path"]).read_bytes() != payload:
            raise Finding("the quarantined file is not the bytes received")
        Path(entry[0]["path"]).unlink()
        return "rejected: " + entry[0]["reason"]

    def _still_serving(self) -> None:
        from node.receiver import StoreStatus

        seed = self.seeds.series[0][0]
        ds = pydicom.dcmread(io.BytesIO(seed))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        status, _ = self._receive(buffer.getvalue())
        if status != StoreStatus.SUCCESS:
            raise Finding(f"a good instance was answered 0x{status:04X} after fuzzed ones")


def _check_volumes(volumes: list) -> None:
    for item in volumes:
        volume = getattr(item, "volume", item)
        if not np.all(np.isfinite(volume.affine)):
            raise Finding(f"volume {getattr(item, 'key', '')} has a non-finite affine")
        if volume.array.dtype != np.float32:
            raise Finding(f"volume {getattr(item, 'key', '')} is {volume.array.dtype}")


class SeriesTarget(Target):
    """The series reader on one series folder."""

    name = "series"

    def make(self, rng: random.Random) -> FuzzInput:
        series = rng.choice(self.seeds.series)
        files = {f"{n:03d}.dcm": data for n, data in enumerate(series)}
        mutations: list[str] = []
        chosen = list(files) if rng.random() < 0.3 else [rng.choice(list(files))]
        seed_state = rng.random()
        for name in chosen:
            # The same mutation on every chosen file (a scanner's systematic mistake).
            files[name], mutations = mutate_dicom(files[name], random.Random(seed_state))
        return FuzzInput(files, mutations)

    def _folder(self, item: FuzzInput) -> Path:
        folder = self.workdir / "input"
        shutil.rmtree(folder, ignore_errors=True)
        item.save(folder)
        return folder

    def _read(self, folder: Path) -> list:
        from dicom_io.scan import find_series
        from dicom_io.series import read_series

        volumes: list = []
        for files in find_series(folder):
            result = read_series(files, max_voxels=self.max_voxels)
            for rejection in result.rejected:
                if not rejection.reason:
                    raise Finding(f"a rejection of {rejection.key} has no reason")
            volumes.extend(result.volumes)
        return volumes

    def run(self, item: FuzzInput) -> str:
        try:
            volumes = self._read(self._folder(item))
        except SegnodeError as exc:
            return f"rejected: {exc}"
        _check_volumes(volumes)
        return "accepted" if volumes else "rejected: no volume"


class StationsTarget(SeriesTarget):
    """Reading, grouping and stitching a whole-body study."""

    name = "stations"

    def make(self, rng: random.Random) -> FuzzInput:
        study = rng.choice(self.seeds.studies)
        files = {f"s{s}/{n:03d}.dcm": data for s, series in enumerate(study)
                 for n, data in enumerate(series)}
        station = rng.randrange(len(study))
        seed_state = rng.random()
        mutations: list[str] = []
        for name in files:
            if name.startswith(f"s{station}/"):
                files[name], mutations = mutate_dicom(files[name], random.Random(seed_state))
        return FuzzInput(files, [f"station {station + 1}: " + "+".join(mutations)])

    def run(self, item: FuzzInput) -> str:
        from dicom_io.stations import group_stations
        from dicom_io.stitch import stitch

        try:
            volumes = self._read(self._folder(item))
            station_sets, singles = group_stations(volumes)
            for station_set in station_sets:
                for run in station_set.contrasts.values():
                    result = stitch([v.volume for v in run])
                    _check_volumes([result.volume])
        except SegnodeError as exc:
            return f"rejected: {exc}"
        if not station_sets:
            return f"rejected: no station set ({len(singles)} volume(s) alone)"
        return f"accepted: {len(station_sets)} set(s), {len(singles)} single(s)"


class ConfigTarget(Target):
    """Loading and validating the node's configuration."""

    name = "config"

    def make(self, rng: random.Random) -> FuzzInput:
        text, names = mutate_config(rng.choice(self.seeds.configs), rng)
        return FuzzInput({"config.yaml": text.encode("utf-8", "replace")}, names)

    def run(self, item: FuzzInput) -> str:
        from node.config import load_config

        path = self.workdir / "config.yaml"
        path.write_bytes(item.files["config.yaml"])
        try:
            load_config(path)
        except SegnodeError as exc:
            return f"rejected: {exc}"
        return "accepted"


class SegTarget(Target):
    """Reading a SEG a viewer or another product sent, as the corrections intake does."""

    name = "seg"

    def make(self, rng: random.Random) -> FuzzInput:
        data, mutations = mutate_dicom(rng.choice(self.seeds.segs), rng)
        return FuzzInput({"seg.dcm": data}, mutations)

    def run(self, item: FuzzInput) -> str:
        from dicom_io.seg_reading import read_seg, seg_labels_on, seg_references
        from model.labels import MRSEGMENTATOR
        from node.exports import segment_infos

        grid = self.seeds.seg_grid
        assert grid is not None
        try:
            dataset = read_seg(item.files["seg.dcm"])
            seg_references(dataset)
            labels, match = seg_labels_on(dataset, grid, segment_infos(MRSEGMENTATOR))
        except SegnodeError as exc:
            return f"rejected: {exc}"
        if labels.spatial_shape != grid.spatial_shape or labels.array.dtype != np.uint16:
            raise Finding(f"labels {labels.spatial_shape} {labels.array.dtype} off the grid")
        if not set(np.unique(labels.array).tolist()) <= {0, *(s.index for s in MRSEGMENTATOR)}:
            raise Finding("label values outside the table")
        if any(not reason for _, reason in match.unmapped):
            raise Finding("an unmapped segment has no reason")
        return f"accepted: {len(match.labels)} mapped, {len(match.unmapped)} unmapped"


TARGETS: dict[str, Callable[..., Target]] = {
    t.name: t for t in (ReceiveTarget, SeriesTarget, StationsTarget, ConfigTarget, SegTarget)
}
