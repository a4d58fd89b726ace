"""Validated settings for a segmentation run (the CLI and the node share them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dicom_io.stations import StationGrouping, StationSet
from segnode_errors import ConfigError

__all__ = [
    "DEFAULT_DISCLAIMER",
    "RunSettings",
    "StationSettings",
    "check_device",
    "default_models_dir",
    "format_validation_error",
]

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(value: str) -> str:
    """Return ``value`` if it names a device (auto, cpu, cuda, cuda:N), else raise ValueError."""
    if not _DEVICE_PATTERN.match(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


#: Printed on the PDF report unless ``reports.disclaimer`` says otherwise.
DEFAULT_DISCLAIMER = ("Automatic segmentation by segnode. Not for diagnostic use unless "
                      "validated locally.")


def default_models_dir() -> Path:
    """Return the per-user model store used when none is configured."""
    return Path.home() / ".local" / "share" / "segnode" / "models"


_DIXON_CONTRASTS = ("in", "opp", "water", "fat")


class StationSettings(BaseModel):
    """How multi-station (whole-body) acquisitions are grouped, stitched and segmented.

    Parameters
    ----------
    enabled
        Group the stations of one acquisition, stitch and segment them once.
    contrast_keys
        Header attributes that must be equal for series to be stations of
        one acquisition (``description_stem`` and ``dixon`` are derived; see
        :mod:`dicom_io.stations`).
    station_suffix
        Regular expression removed from the end of SeriesDescription (after
        a Dixon suffix) to compare descriptions without station numbers.
    max_gap_mm
        Largest gap between two stations still stitched (and flagged).
    segment_contrast
        Dixon contrast segmented when the contrasts are segmented once; its
        labels are written for all four series of each station. The first
        present of this, then ``opp``, ``in``, ``water``, ``fat`` is used.
    segment_each_contrast
        Segment every Dixon contrast on its own instead.
    write_stitched
        Also write the stitched image (``stitched.nii.gz``) next to the labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    contrast_keys: tuple[str, ...] = StationGrouping().contrast_keys
    station_suffix: str = StationGrouping().station_suffix
    max_gap_mm: float = Field(default=StationGrouping().max_gap_mm, ge=0)
    segment_contrast: Literal["in", "opp", "water", "fat"] = "opp"
    segment_each_contrast: bool = False
    write_stitched: bool = False

    @field_validator("station_suffix")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def grouping(self) -> StationGrouping:
        """The grouping rules as :mod:`dicom_io.stations` takes them."""
        return StationGrouping(contrast_keys=self.contrast_keys,
                               station_suffix=self.station_suffix, max_gap_mm=self.max_gap_mm)

    def contrast_preference(self) -> tuple[str, ...]:
        """Dixon contrasts in the order they are tried for segmentation."""
        return (self.segment_contrast,
                *(c for c in _DIXON_CONTRASTS if c != self.segment_contrast), "image")

    def plans(self, stations: StationSet) -> list[tuple[str, str, tuple[str, ...]]]:
        """What is segmented of a station set: (folder key, contrast segmented, contrasts written).

        With ``segment_each_contrast`` every Dixon contrast is stitched and
        segmented on its own (``<key>.<contrast>``); otherwise the preferred
        contrast is, and its labels are written for the series of every contrast.
        """
        if self.segment_each_contrast and len(stations.contrasts) > 1:
            return [(f"{stations.key}.{c}", c, (c,)) for c in stations.contrasts]
        chosen = next(c for c in (*self.contrast_preference(), *stations.contrasts)
                      if c in stations.contrasts)
        others = tuple(c for c in stations.contrasts if c != chosen)
        return [(stations.key, chosen, (chosen, *others))]


class RunSettings(BaseModel):
    """Everything one segmentation run needs besides its input and output.

    Parameters
    ----------
    models
        Model pack names (as listed by ``segnode models list``) or paths of
        nnU-Net v2 trained-model folders; every volume is segmented by each
        (one SEG per pack, one SR for all). Empty uses the built-in demo.
    models_dir
        Where installed model packs live.
    device
        ``auto`` (CUDA when torch sees it, else CPU), ``cpu``, ``cuda`` or
        ``cuda:N``.
    seg_type
        ``binary`` (one frame per segment and slice; the default, shown
        correctly by every viewer) or ``labelmap`` (one frame per slice, RLE).
    folds
        nnU-Net folds to ensemble; ``None`` lets the engine choose for the
        device (one fold on CPU, all on CUDA).
    tile_step_size
        Sliding-window step as a fraction of the patch; ``None`` lets the
        engine choose for the device.
    precision
        Autocast dtype of the network: ``auto`` (bf16 on a GPU or a CPU with
        native bf16, fp16 on older GPUs, else fp32), ``fp32``, ``bf16``, ``fp16``.
    compile
        Compile each fold's network at load (worth it for a long-running node).
    threads
        torch CPU threads (process-wide); ``None`` uses every core this
        process may run on.
    max_volume_megavoxels
        A volume with more voxels (millions) is refused before decoding, with
        the reason; ``None``: no limit.
    stations
        Grouping and stitching of multi-station acquisitions.
    reports
        Extra outputs every viewer can show: ``pdf`` (encapsulated PDF report)
        and ``sc`` (secondary capture of the preview).
    disclaimer
        Wording printed on the PDF report.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = ()
    models_dir: Path = Field(default_factory=default_models_dir)
    device: str = "auto"
    seg_type: Literal["binary", "labelmap"] = "binary"
    folds: tuple[int, ...] | None = None
    tile_step_size: float | None = Field(default=None, gt=0.0, le=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    threads: int | None = Field(default=None, ge=1)
    max_volume_megavoxels: float | None = Field(default=None, gt=0)
    stations: StationSettings = Field(default_factory=StationSettings)
    reports: tuple[Literal["pdf", "sc"], ...] = ()
    disclaimer: str = DEFAULT_DISCLAIMER

    _check_device = field_validator("device")(check_device)
    _check_models = field_validator("models", mode="before")(lambda v: pack_names(v))

    @classmethod
    def build(cls, **values: object) -> RunSettings:
        """Validate ``values`` and raise :class:`ConfigError` naming each bad key."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None


def pack_names(value: object) -> tuple[str, ...]:
    """One pack name or a list of them as a tuple; refuses blanks and repeats."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError("pack names must be non-empty strings")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"pack(s) named more than once: {', '.join(repeated)}")
    return names


def format_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as one line per problem, each with its key path."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            lines.extend(message.splitlines())  # whole-model checks name their own keys
            continue
        path = ".".join(str(part) for part in error["loc"])
        lines.append(f"{path}: {message}")
    return "\n".join(lines)
