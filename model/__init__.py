"""segnode's segmentation engine: model packs, label tables, nnU-Net inference.

``model`` takes and returns ``highdicom.Volume`` objects and never touches
DICOM datasets, ``dicom_io`` or ``node``. The torch-dependent names
(:class:`SegmentationEngine`, :func:`resolve_device`, :func:`parse_device`)
are imported on first use, so that listing or installing packs does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .labels import (
    ANATOMICAL_STRUCTURE,
    MRSEGMENTATOR,
    Code,
    LabelTable,
    Structure,
    table_from_dataset_json,
)
from .packs import DEMO_PACK_NAME, ModelPack, load_pack
from .store import ModelStore

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "Code",
    "DEMO_PACK_NAME",
    "LabelTable",
    "MRSEGMENTATOR",
    "ModelPack",
    "ModelStore",
    "SegmentationEngine",
    "Structure",
    "load_pack",
    "parse_device",
    "resolve_device",
    "table_from_dataset_json",
]

_LAZY = {
    "SegmentationEngine": "model.engine",
    "parse_device": "model.device",
    "resolve_device": "model.device",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute '{name}'")
