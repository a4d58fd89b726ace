"""Model packs: an nnU-Net v2 trained model folder plus segnode's metadata.

A pack folder is exactly what nnU-Net writes after training (and what
MRSegmentator's release zip holds)::

    plans.json
    dataset.json
    fold_0/checkpoint_final.pth     (one or more fold_N, or fold_all)
    segnode.json                    (optional, segnode's metadata)
    .segnode-weights.json           (cache of the checkpoint SHA-256s)

``segnode.json`` holds ``{"name", "version", "description",
"input_orientation", "licence", "checkpoints", "archive_sha256"}``;
``checkpoints`` maps each checkpoint to the SHA-256 recorded when the pack
was installed (``segnode models verify`` compares against it).
``input_orientation`` is the ITK-style code of the orientation the model
was trained in (see :mod:`model._nnunet`); it defaults
to ``"LPS"``, which is what MRSegmentator reorients to. Without a
``segnode.json`` the version is taken from MRSegmentator's ``version.json``
(``weights_version``) if present.

The built-in demo model (``model/demo_model``) is the pack named ``"demo"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segnode_errors import ModelError

from ._nnunet import validate_orientation
from .label_file import LABELS_JSON, read_label_json
from .labels import LabelTable, table_from_dataset_json

__all__ = [
    "CHECKPOINT_NAME",
    "DEMO_PACK_DIR",
    "DEMO_PACK_NAME",
    "METADATA_FILE",
    "ModelPack",
    "checkpoint_hashes",
    "find_folds",
    "is_nnunet_folder",
    "load_pack",
    "verify_checkpoints",
    "weights_sha256",
    "write_metadata",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

CHECKPOINT_NAME = "checkpoint_final.pth"
METADATA_FILE = "segnode.json"
DEMO_PACK_NAME = "demo"
DEMO_PACK_DIR = Path(__file__).resolve().parent / "demo_model"
_SHA_CACHE = ".segnode-weights.json"
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")

Fold = int | str


@dataclass(frozen=True)
class ModelPack:
    """A loadable nnU-Net v2 model folder and what segnode knows about it.

    Attributes
    ----------
    name : str
        Pack name (``"demo"``, ``"mrsegmentator"``, ...).
    version : str
        Model version (e.g. the release's weights version).
    folder : pathlib.Path
        The nnU-Net model folder (holds ``plans.json``).
    folds : tuple of int or str
        Folds with a ``checkpoint_final.pth``, ascending; ``"all"`` last.
    labels : LabelTable
        Label index -> structure, from ``dataset.json``.
    weights_sha256 : str
        SHA-256 over all checkpoints (see :func:`weights_sha256`).
    input_orientation : str
        ITK-style orientation the model expects, e.g. ``"LPS"``.
    description : str
        Free text.
    builtin : bool
        True for the demo pack shipped inside the package.
    licence : str
        Licence of the weights, as the pack states it ("" when unknown).
    """

    name: str
    version: str
    folder: Path
    folds: tuple[Fold, ...]
    labels: LabelTable
    weights_sha256: str
    input_orientation: str
    description: str
    builtin: bool = False
    licence: str = ""

    def checkpoint(self, fold: Fold) -> Path:
        """Return the checkpoint path of ``fold``."""
        return self.folder / f"fold_{fold}" / CHECKPOINT_NAME

    def info(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (for ``segnode models list``)."""
        return {
            "name": self.name,
            "version": self.version,
            "folder": str(self.folder),
            "folds": list(self.folds),
            "structures": len(self.labels),
            "weights_sha256": self.weights_sha256,
            "input_orientation": self.input_orientation,
            "description": self.description,
            "builtin": self.builtin,
            "licence": self.licence,
        }


def find_folds(folder: Path) -> tuple[Fold, ...]:
    """Return the folds of ``folder`` that have a ``checkpoint_final.pth``.

    Parameters
    ----------
    folder : pathlib.Path
        An nnU-Net model folder.

    Returns
    -------
    tuple of int or str
        Integer folds ascending, then ``"all"`` if present.
    """
    folds: list[Fold] = []
    if not folder.is_dir():
        return ()
    for child in folder.iterdir():
        match = _FOLD_RE.match(child.name)
        if match and (child / CHECKPOINT_NAME).is_file():
            folds.append("all" if match.group(1) == "all" else int(match.group(1)))
    return tuple(sorted(folds, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0)))


def is_nnunet_folder(folder: Path) -> bool:
    """True if ``folder`` holds plans.json, dataset.json and at least one fold checkpoint."""
    return (
        (folder / "plans.json").is_file()
        and (folder / "dataset.json").is_file()
        and bool(find_folds(folder))
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not read '{path}': {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"'{path}' must hold a JSON object, received {type(data).__name__}.")
    return data


def write_metadata(folder: Path, **fields: Any) -> None:
    """Merge ``fields`` into ``folder/segnode.json`` (written atomically).

    Parameters
    ----------
    folder : pathlib.Path
        A pack folder.
    **fields
        Keys such as ``name``, ``version``, ``description``, ``input_orientation``.
    """
    path = folder / METADATA_FILE
    data = _read_json(path) if path.is_file() else {}
    data.update({k: v for k, v in fields.items() if v is not None})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hashes(folder: Path, folds: tuple[Fold, ...] | None = None, *,
                      fresh: bool = False) -> dict[str, str]:
    """SHA-256 of each fold's checkpoint, keyed by its path relative to ``folder``.

    Per-file hashes are cached in ``.segnode-weights.json`` keyed by size and
    mtime; ``fresh`` reads every file again (``segnode models verify``). A
    read-only folder is hashed every time.
    """
    folds = find_folds(folder) if folds is None else folds
    cache_path = folder / _SHA_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    files = cache.get("files", {}) if isinstance(cache, dict) else {}
    hashes, changed = {}, False
    for fold in folds:
        rel = f"fold_{fold}/{CHECKPOINT_NAME}"
        stat = (folder / rel).stat()
        entry = files.get(rel)
        cached = not fresh and entry and (entry.get("size"), entry.get("mtime_ns")) == (
            stat.st_size, stat.st_mtime_ns)
        if not cached:
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                     "sha256": _file_sha256(folder / rel)}
            files[rel], changed = entry, True
        hashes[rel] = entry["sha256"]
    if changed:
        try:
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"files": files}, indent=2), encoding="utf-8")
            os.replace(tmp, cache_path)
        except OSError as exc:
            logger.debug("Could not cache weight hashes in %s: %s", folder, exc)
    return hashes


def weights_sha256(folder: Path, folds: tuple[Fold, ...] | None = None) -> str:
    """SHA-256 identifying a pack's weights, computed once and cached.

    The value is the SHA-256 of the lines ``"<relative path>  <file sha256>\n"``
    for each fold's checkpoint in fold order (``sha256sum`` format).

    Parameters
    ----------
    folder : pathlib.Path
        A pack folder.
    folds : tuple, optional
        Folds to include; all available folds when omitted.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    lines = [f"{rel}  {sha}\n" for rel, sha in checkpoint_hashes(folder, folds).items()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def verify_checkpoints(pack: ModelPack) -> list[str]:
    """Re-read every checkpoint and compare it with the hashes recorded at install.

    Returns the problems, one line each (empty when everything matches).
    """
    meta_path = pack.folder / METADATA_FILE
    recorded = _read_json(meta_path).get("checkpoints") if meta_path.is_file() else None
    if not isinstance(recorded, dict) or not recorded:
        return [f"{pack.name}: no checkpoint hashes recorded (install it again to record them)"]
    current = checkpoint_hashes(pack.folder, fresh=True)
    problems = []
    for rel, expected in sorted(recorded.items()):
        received = current.get(rel)
        if received is None:
            problems.append(f"{pack.name}: {rel} is missing")
        elif received != expected:
            problems.append(f"{pack.name}: {rel} changed - expected SHA-256 {expected}, "
                            f"received {received}")
    problems.extend(f"{pack.name}: {rel} was not part of the installed pack"
                    for rel in sorted(set(current) - set(recorded)))
    return problems


def load_pack(folder: Path | str, *, name: str | None = None, builtin: bool = False) -> ModelPack:
    """Load a model pack from an nnU-Net v2 trained model folder.

    Parameters
    ----------
    folder : pathlib.Path or str
        Folder holding ``plans.json``, ``dataset.json`` and ``fold_N/checkpoint_final.pth``.
    name : str, optional
        Pack name; default: ``segnode.json``'s ``name``, else the folder name.
    builtin : bool, optional
        Mark the pack as the built-in demo.

    Returns
    -------
    ModelPack

    Raises
    ------
    ModelError
        If the folder is not a complete nnU-Net model folder or its metadata is invalid.
    """
    folder = Path(folder).resolve()
    if not is_nnunet_folder(folder):
        raise ModelError(
            f"'{folder}' is not an nnU-Net v2 model folder - expected plans.json, dataset.json "
            f"and fold_N/{CHECKPOINT_NAME}."
        )
    meta = _read_json(folder / METADATA_FILE) if (folder / METADATA_FILE).is_file() else {}
    pack_name = name or str(meta.get("name") or folder.name)
    dataset = _read_json(folder / "dataset.json")
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise ModelError(f"'{folder / 'dataset.json'}' has no 'labels' object.")
    folds = find_folds(folder)
    own_table = folder / LABELS_JSON  # a site's own codes (segnode models add)
    table = (read_label_json(own_table, name=pack_name) if own_table.is_file()
             else table_from_dataset_json(labels, name=pack_name))
    return ModelPack(
        name=pack_name,
        version=_version_of(folder, meta),
        folder=folder,
        folds=folds,
        labels=table,
        weights_sha256=weights_sha256(folder, folds),
        input_orientation=validate_orientation(str(meta.get("input_orientation", "LPS"))),
        description=str(meta.get("description", "")),
        builtin=builtin,
        licence=str(meta.get("licence", "")),
    )


def _version_of(folder: Path, meta: dict[str, Any]) -> str:
    if meta.get("version") is not None:
        return str(meta["version"])
    version_json = folder / "version.json"
    if version_json.is_file():
        value = _read_json(version_json).get("weights_version")
        if value is not None:
            return str(value)
    return "unknown"
