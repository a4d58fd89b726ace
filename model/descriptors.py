"""Pack descriptors: what segnode knows about each published model it can install.

One YAML file per pack in ``model/pack_descriptors/`` says where the weights
come from (a URL with its SHA-256, or a manual-download instruction), their
licence, the nnU-Net model folders inside the archives (trainer, plans,
configuration, folds, checkpoint) and how their label values map onto the
pack's, the input orientation, the recommended inference settings per
device type, the modalities and body regions the pack is meant for, and its
label table (the schema of a site's ``labels.yaml``, see
:mod:`model.label_file`). Facts and their sources: ``docs/model-packs.md``.

The files are validated when read: a wrong key or value names the file and
the field.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from segnode_errors import ModelError

from ._nnunet import validate_orientation
from .label_file import table_from_entries
from .labels import LabelTable

__all__ = ["DESCRIPTOR_DIR", "PackDescriptor", "descriptor", "descriptors"]

DESCRIPTOR_DIR = Path(__file__).resolve().parent / "pack_descriptors"

FoldName = int | Literal["all"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Archive(_Strict):
    """One file of weights: where to fetch it and how to recognise it."""

    #: File name, as downloaded and as looked for in a folder given to ``--from``.
    file: str = Field(pattern=r"^[A-Za-z0-9_.+-]+\.zip$")
    #: Download URL; ``null`` for weights that must be fetched by hand.
    url: str | None = Field(default=None, pattern=r"^https://")
    #: SHA-256 of the file; ``null`` where the publisher gives none (recorded at install).
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ModelEntry(_Strict):
    """One nnU-Net model folder of the pack."""

    id: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    #: Where the model folder is inside the unpacked archives: a glob, matched at
    #: any depth; ``.`` is the archive root.
    folder: str
    trainer: str
    #: Plans name (``plans.json`` ``plans_name``) and configuration of the
    #: checkpoints; ``null`` where the publisher does not say (then not checked).
    plans: str | None = "nnUNetPlans"
    configuration: str | None = "3d_fullres"
    #: Folds the release ships.
    folds: tuple[FoldName, ...] = Field(min_length=1)
    checkpoint: str = "checkpoint_final.pth"
    #: The model's labels are 1..label_count; pack value = model value + label_offset.
    label_count: int = Field(ge=1)
    label_offset: int = Field(default=0, ge=0)

    def label_map(self) -> dict[int, int]:
        """Model label value -> pack label value."""
        return {v: v + self.label_offset for v in range(1, self.label_count + 1)}


class DeviceSettings(_Strict):
    """Recommended inference settings on one device type."""

    folds: tuple[FoldName, ...] | None = None
    tile_step_size: float | None = Field(default=None, gt=0.0, le=1.0)


class Settings(_Strict):
    """Recommended settings on CPU and on CUDA."""

    cpu: DeviceSettings = Field(default_factory=DeviceSettings)
    cuda: DeviceSettings = Field(default_factory=DeviceSettings)


class PackDescriptor(_Strict):
    """A published model pack segnode can install."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: str
    description: str
    licence: str
    #: False for weights whose licence forbids commercial use.
    commercial_use: bool
    #: How to obtain weights that have no URL (shown when ``--from`` is missing).
    manual_download: str | None = None
    #: Where the facts of this file were read.
    sources: tuple[str, ...] = Field(min_length=1)
    archives: tuple[Archive, ...] = Field(min_length=1)
    models: tuple[ModelEntry, ...] = Field(min_length=1)
    #: How several models' outputs become one label map: later models overwrite
    #: earlier ones where they found a structure.
    merge: Literal["overwrite"] = "overwrite"
    input_orientation: str
    settings: Settings = Field(default_factory=Settings)
    modalities: tuple[Literal["MR", "CT"], ...] = Field(min_length=1)
    regions: tuple[str, ...] = Field(min_length=1)
    #: Unverified facts a site should check once it has the weights.
    caveats: tuple[str, ...] = ()
    labels: dict[int, dict[str, Any]]

    @field_validator("input_orientation")
    @classmethod
    def _check_orientation(cls, value: str) -> str:
        try:
            return validate_orientation(value)
        except ModelError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> PackDescriptor:
        if any(a.url is None for a in self.archives) and not self.manual_download:
            raise ValueError("archives without url need 'manual_download'")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"models: duplicate id in {ids}")
        covered = sorted(v for m in self.models for v in m.label_map().values())
        if sorted(set(covered)) != sorted(self.labels):
            raise ValueError(f"models cover label values {sorted(set(covered))} but 'labels' "
                             f"has {sorted(self.labels)}")
        return self

    def label_table(self) -> LabelTable:
        """The pack's label table, validated (codes, colours, left/right twins)."""
        return table_from_entries(self.labels, f"pack descriptor '{self.name}'", name=self.name)

    def metadata(self) -> dict[str, Any]:
        """The ``segnode.json`` fields of an installed pack (models without their folders)."""
        return {
            "name": self.name, "version": self.version, "description": self.description,
            "licence": self.licence, "commercial_use": self.commercial_use,
            "input_orientation": self.input_orientation,
            "modalities": list(self.modalities), "regions": list(self.regions),
            "settings": self.settings.model_dump(exclude_none=True),
            "merge": self.merge,
        }


def _load(path: Path) -> PackDescriptor:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return PackDescriptor.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"Pack descriptor '{path}' cannot be read: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"Pack descriptor '{path}' is invalid: {problems}") from None


@functools.cache
def descriptors() -> dict[str, PackDescriptor]:
    """Every shipped pack descriptor, by name."""
    found = {}
    for path in sorted(DESCRIPTOR_DIR.glob("*.yaml")):
        item = _load(path)
        if item.name != path.stem:
            raise ModelError(f"Pack descriptor '{path}' is named '{item.name}'; the file must "
                             f"be called '{item.name}.yaml'.")
        found[item.name] = item
    return found


def descriptor(name: str) -> PackDescriptor | None:
    """The shipped descriptor called ``name``, or None."""
    return descriptors().get(name)
