"""Find the stations of multi-station acquisitions among the volumes of a study.

Whole-body MRI arrives as several stations, each its own series, often with
four Dixon contrasts per station (in-phase, opposed-phase, water, fat).
Volumes are stations of one acquisition when they share the study, the
patient orientation and the *contrast key* (by default Modality, ImageType
without the Dixon value, SequenceName, EchoTime and the SeriesDescription
stem: the description without its Dixon suffix and station number), and
their extents follow each other along one axis: overlapping by less than
half of the smaller station, touching, or separated by a gap of at most
``max_gap_mm`` (a missing station; reported when stitched).

The Dixon contrast of a volume is read from ImageType (``W``, ``F``,
``IN_PHASE``, ``OUT_PHASE``, ...) or the description suffix (Siemens
``_in``, ``_opp``, ``_W``, ``_F``). Contrast groups whose stations have the
same geometry form one :class:`StationSet`, so one contrast can be
segmented and its labels written for all of them.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dicom_io.volume import SeriesVolume

__all__ = ["StationGrouping", "StationSet", "group_stations", "dixon_contrast",
           "description_stem"]

_DIXON_IMAGE_TYPE = {
    "W": "water", "WATER": "water", "F": "fat", "FAT": "fat",
    "IN_PHASE": "in", "IP": "in", "IN": "in",
    "OUT_PHASE": "opp", "OP": "opp", "OPP": "opp", "OUT": "opp",
}
_DIXON_SUFFIX = re.compile(r"(?i)[_\s-](in|ip|opp|op|out|w|f|water|fat)$")
_DIXON_SUFFIX_NAMES = {"in": "in", "ip": "in", "opp": "opp", "op": "opp", "out": "opp",
                       "w": "water", "water": "water", "f": "fat", "fat": "fat"}
_GEOMETRY_ATOL_MM = 0.5


@dataclass(frozen=True)
class StationGrouping:
    """How stations are recognised.

    Attributes
    ----------
    contrast_keys : tuple of str
        Header attributes that must be equal within one acquisition; the
        pseudo-keys ``description_stem`` and ``dixon`` stand for the stem of
        SeriesDescription and the Dixon contrast. ImageType is compared
        without its Dixon value.
    station_suffix : str
        Regular expression removed from the end of SeriesDescription (after
        the Dixon suffix) to get its stem: station numbers such as ``_1``,
        ``_st2``, ``station 3``.
    max_overlap : float
        Largest overlap, as a share of the smaller station's length, of two
        consecutive stations (more is a repeat, not a station).
    max_gap_mm : float
        Largest gap between consecutive stations still grouped (and flagged).
    """

    contrast_keys: tuple[str, ...] = ("Modality", "ImageType", "SequenceName", "EchoTime",
                                      "description_stem", "dixon")
    station_suffix: str = (r"(?i)(?:[_\s-]+(?:station|stat|stn|st|s)?[_\s-]*"
                           r"|(?:station|stat|stn|st|s)[_\s-]*)\d{1,2}$")
    max_overlap: float = 0.5
    max_gap_mm: float = 250.0


@dataclass(frozen=True)
class StationSet:
    """The stations of one acquisition, per contrast, in stacking order.

    ``contrasts`` maps a contrast name (``in``, ``opp``, ``water``, ``fat``,
    or ``image`` when not Dixon) to its station volumes; station n of every
    contrast has the same geometry. ``key`` names the set for output folders
    (``<StudyInstanceUID>.stations-<hash of the contrast key>``).
    """

    key: str
    study_uid: str
    contrasts: dict[str, tuple[SeriesVolume, ...]] = field(default_factory=dict)

    @property
    def station_count(self) -> int:
        """Number of stations (the same for every contrast)."""
        return len(next(iter(self.contrasts.values())))


def _header(volume: SeriesVolume, keyword: str) -> object:
    return volume.source[0].get(keyword, "") if volume.source else ""


def dixon_contrast(volume: SeriesVolume) -> str:
    """``in``, ``opp``, ``water``, ``fat`` from ImageType or the description, else ``""``."""
    image_type = _header(volume, "ImageType")
    values = [str(v).upper() for v in (image_type if not isinstance(image_type, str)
                                       else image_type.split("\\"))]
    for value in values[2:]:
        if value in _DIXON_IMAGE_TYPE:
            return _DIXON_IMAGE_TYPE[value]
    match = _DIXON_SUFFIX.search(volume.description.strip())
    return _DIXON_SUFFIX_NAMES[match.group(1).lower()] if match else ""


def description_stem(description: str, grouping: StationGrouping) -> str:
    """SeriesDescription without its Dixon suffix and station number."""
    stem = _DIXON_SUFFIX.sub("", description.strip())
    return re.sub(grouping.station_suffix, "", stem).strip(" _-").lower()


def _contrast_key(volume: SeriesVolume, grouping: StationGrouping) -> tuple[str, ...]:
    parts = [volume.study_uid, _orientation_key(volume)]
    for keyword in grouping.contrast_keys:
        if keyword == "description_stem":
            parts.append(description_stem(volume.description, grouping))
        elif keyword == "dixon":
            parts.append(dixon_contrast(volume))
        elif keyword == "ImageType":
            value = _header(volume, "ImageType")
            items = list(value) if not isinstance(value, str) else value.split("\\")
            parts.append("\\".join(str(v).upper() for v in items
                                   if str(v).upper() not in _DIXON_IMAGE_TYPE))
        elif keyword == "EchoTime":
            value = _header(volume, "EchoTime")
            parts.append(f"{float(value):.1f}" if value not in ("", None) else "")
        else:
            parts.append(str(_header(volume, keyword)))
    return tuple(parts)


def _orientation_key(volume: SeriesVolume) -> str:
    axes = volume.volume.direction
    signed = np.round(np.abs(axes), 2)
    return ",".join(f"{v:.2f}" for v in signed.ravel())


def _extent(volume: SeriesVolume, axis: np.ndarray) -> tuple[float, float]:
    shape = np.asarray(volume.volume.spatial_shape, dtype=float)
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij"))
    points = (volume.volume.affine[:3, :3] @ corners.reshape(3, -1)).T + volume.volume.affine[
        :3, 3]
    along = points @ axis
    return float(along.min()), float(along.max())


def _runs(volumes: list[SeriesVolume], grouping: StationGrouping) -> list[list[SeriesVolume]]:
    """Split same-contrast volumes into runs of consecutive stations."""
    centres = np.array([v.volume.affine[:3, :3] @ ((np.asarray(v.volume.spatial_shape) - 1) / 2)
                        + v.volume.affine[:3, 3] for v in volumes])
    spread = centres.max(axis=0) - centres.min(axis=0)
    axis = np.zeros(3)
    axis[int(np.argmax(spread))] = 1.0
    ordered = sorted(volumes, key=lambda v: _extent(v, axis)[0])
    runs: list[list[SeriesVolume]] = [[ordered[0]]]
    for volume in ordered[1:]:
        low, high = _extent(volume, axis)
        prev_low, prev_high = _extent(runs[-1][-1], axis)
        overlap = prev_high - low
        shorter = min(high - low, prev_high - prev_low)
        if overlap > grouping.max_overlap * shorter or -overlap > grouping.max_gap_mm:
            runs.append([volume])
        else:
            runs[-1].append(volume)
    return runs


def _same_geometry(a: Sequence[SeriesVolume], b: Sequence[SeriesVolume]) -> bool:
    return len(a) == len(b) and all(
        x.volume.spatial_shape == y.volume.spatial_shape
        and np.allclose(x.volume.affine, y.volume.affine, atol=_GEOMETRY_ATOL_MM)
        for x, y in zip(a, b, strict=True))


def _set_key(study_uid: str, contrast_key: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\x1f".join(contrast_key).encode()).hexdigest()[:10]
    return f"{study_uid}.stations-{digest}"


def group_stations(volumes: Sequence[SeriesVolume], grouping: StationGrouping | None = None
                   ) -> tuple[list[StationSet], list[SeriesVolume]]:
    """Group ``volumes`` into station sets; the volumes that are no station come back alone.

    Returns
    -------
    tuple
        ``(station_sets, singles)``: sets of two or more stations (Dixon
        contrasts with the same station geometry merged into one set), and
        every other volume.
    """
    grouping = grouping or StationGrouping()
    buckets: dict[tuple[str, ...], list[SeriesVolume]] = defaultdict(list)
    for volume in volumes:
        buckets[_contrast_key(volume, grouping)].append(volume)
    singles: list[SeriesVolume] = []
    runs: list[tuple[tuple[str, ...], list[SeriesVolume]]] = []
    for key, members in buckets.items():
        for run in _runs(members, grouping):
            if len(run) > 1:
                runs.append((key, run))
            else:
                singles.extend(run)
    return _merge_contrasts(runs, grouping), singles


def _merge_contrasts(runs: list[tuple[tuple[str, ...], list[SeriesVolume]]],
                     grouping: StationGrouping) -> list[StationSet]:
    """Runs with the same station geometry (Dixon contrasts) become one set."""
    sets: list[StationSet] = []
    for _, run in sorted(runs, key=lambda item: item[0]):
        contrast = dixon_contrast(run[0]) or "image"
        for existing in sets:
            first = next(iter(existing.contrasts.values()))
            if (existing.study_uid == run[0].study_uid and contrast not in existing.contrasts
                    and _same_geometry(first, run)):
                existing.contrasts[contrast] = tuple(run)
                break
        else:
            # Named by what all its contrasts share, so adding a contrast keeps the key.
            shared = (run[0].modality, _orientation_key(run[0]),
                      description_stem(run[0].description, grouping))
            key = _set_key(run[0].study_uid, shared)
            taken = sum(1 for existing in sets if existing.key.split("~")[0] == key)
            sets.append(StationSet(f"{key}~{taken + 1}" if taken else key, run[0].study_uid,
                                   {contrast: tuple(run)}))
    return sets
