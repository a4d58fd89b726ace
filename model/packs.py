"""Model packs: one or more nnU-Net v2 trained model folders plus segnode's metadata.

A single-model pack folder is exactly what nnU-Net writes after training
(and what MRSegmentator's release zip holds)::

    plans.json
    dataset.json
    fold_0/checkpoint_final.pth     (one or more fold_N, or fold_all)
    segnode.json                    (optional, segnode's metadata)
    labels.json                     (optional, the pack's own label table)
    .segnode-weights.json           (cache of the checkpoint SHA-256s)

A pack installed from the catalogue (:mod:`model.catalogue`) holds one
nnU-Net folder per model, named by the model's id, next to ``segnode.json``
and ``labels.json``; ``segnode.json``'s ``models`` list names them, their
trainer and configuration, and how each model's label values map onto the
pack's (later models overwrite earlier ones where they found a structure,
as TotalSegmentator merges its parts).

``segnode.json`` holds ``{"name", "version", "description",
"input_orientation", "licence", "modalities", "regions", "settings",
"models", "checkpoints", "archives"}``; ``checkpoints`` maps each checkpoint
(path relative to the pack) to the SHA-256 recorded when the pack was
installed (``segnode models verify`` compares against it).
``input_orientation`` is the ITK-style code of the orientation the model
was trained in (see :mod:`model._nnunet`); it defaults to ``"LPS"``, which
is what MRSegmentator reorients to. ``settings`` holds the recommended
``folds`` and ``tile_step_size`` per device type (``cpu``, ``cuda``).
Without a ``segnode.json`` the version is taken from MRSegmentator's
``version.json`` (``weights_version``) if present.

The built-in demo model (``model/demo_model``) is the pack named ``"demo"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    "InferenceDefaults",
    "ModelPack",
    "NnunetModel",
    "checkpoint_hashes",
    "dataset_labels",
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
_DEVICE_TYPES = ("cpu", "cuda")

Fold = int | str


@dataclass(frozen=True)
class NnunetModel:
    """One nnU-Net v2 trained model folder of a pack.

    Attributes
    ----------
    id : str
        Short name of the model inside its pack (``"organs"``); ``"model"``
        for a single-model pack.
    folder : pathlib.Path
        The nnU-Net model folder (holds ``plans.json``).
    folds : tuple of int or str
        Folds with a checkpoint, ascending; ``"all"`` last.
    checkpoint_name : str
        File name of each fold's checkpoint.
    trainer, configuration : str or None
        What the pack declares the checkpoints were trained with; the engine
        refuses checkpoints that say otherwise. None: not declared.
    label_map : tuple of (int, int)
        Model label value -> pack label value; empty means the same values.
    """

    id: str
    folder: Path
    folds: tuple[Fold, ...]
    checkpoint_name: str = CHECKPOINT_NAME
    trainer: str | None = None
    configuration: str | None = None
    label_map: tuple[tuple[int, int], ...] = ()

    def checkpoint(self, fold: Fold) -> Path:
        """Return the checkpoint path of ``fold``."""
        return self.folder / f"fold_{fold}" / self.checkpoint_name


@dataclass(frozen=True)
class InferenceDefaults:
    """Recommended inference settings of a pack for one device type."""

    folds: tuple[Fold, ...] | None = None
    tile_step_size: float | None = None


@dataclass(frozen=True)
class ModelPack:
    """A loadable model pack and what segnode knows about it.

    Attributes
    ----------
    name : str
        Pack name (``"demo"``, ``"mrsegmentator"``, ...).
    version : str
        Model version (e.g. the release's weights version).
    folder : pathlib.Path
        The pack folder (for a single-model pack, the nnU-Net folder itself).
    models : tuple of NnunetModel
        The nnU-Net models, in the order their outputs are merged.
    labels : LabelTable
        Pack label value -> structure.
    weights_sha256 : str
        SHA-256 over all checkpoints (see :func:`weights_sha256`).
    input_orientation : str
        ITK-style orientation the models expect, e.g. ``"LPS"``.
    description : str
        Free text.
    builtin : bool
        True for the demo pack shipped inside the package.
    licence : str
        Licence of the weights, as the pack states it ("" when unknown).
    modalities : tuple of str
        Modalities the pack is meant for (empty: not stated).
    regions : tuple of str
        Body regions the pack is meant for (free text, empty: not stated).
    defaults : dict of str to InferenceDefaults
        Recommended settings per device type (``"cpu"``, ``"cuda"``).
    archive_check : str
        How the installed archives were checked: ``checked`` (SHA-256 matched
        a published or given value), ``recorded`` (none to match; recorded),
        ``none`` (installed from a folder), ``""`` (not installed by segnode).
    """

    name: str
    version: str
    folder: Path
    models: tuple[NnunetModel, ...]
    labels: LabelTable
    weights_sha256: str
    input_orientation: str
    description: str
    builtin: bool = False
    licence: str = ""
    modalities: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    defaults: Mapping[str, InferenceDefaults] = field(default_factory=dict)
    archive_check: str = ""

    @property
    def folds(self) -> tuple[Fold, ...]:
        """Folds every model of the pack has."""
        common = [f for f in self.models[0].folds if all(f in m.folds for m in self.models)]
        return tuple(common)

    def info(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (for ``segnode models list``)."""
        return {
            "name": self.name,
            "version": self.version,
            "folder": str(self.folder),
            "models": [m.id for m in self.models],
            "folds": list(self.folds),
            "structures": len(self.labels),
            "weights_sha256": self.weights_sha256,
            "input_orientation": self.input_orientation,
            "description": self.description,
            "builtin": self.builtin,
            "licence": self.licence,
            "modalities": list(self.modalities),
            "regions": list(self.regions),
            "archive_check": self.archive_check,
        }


def find_folds(folder: Path, checkpoint_name: str = CHECKPOINT_NAME) -> tuple[Fold, ...]:
    """Return the folds of ``folder`` that have a checkpoint.

    Parameters
    ----------
    folder : pathlib.Path
        An nnU-Net model folder.
    checkpoint_name : str, optional
        File name of the checkpoints (``checkpoint_final.pth``).

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
        if match and (child / checkpoint_name).is_file():
            folds.append("all" if match.group(1) == "all" else int(match.group(1)))
    return tuple(sorted(folds, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0)))


def is_nnunet_folder(folder: Path, checkpoint_name: str = CHECKPOINT_NAME) -> bool:
    """True if ``folder`` holds plans.json, dataset.json and at least one fold checkpoint."""
    return (
        (folder / "plans.json").is_file()
        and (folder / "dataset.json").is_file()
        and bool(find_folds(folder, checkpoint_name))
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


def _checkpoint_files(folder: Path, models: tuple[NnunetModel, ...] | None) -> list[str]:
    """Checkpoint paths relative to the pack folder, in model then fold order."""
    if models is None:
        return [f"fold_{fold}/{CHECKPOINT_NAME}" for fold in find_folds(folder)]
    files = []
    for model in models:
        for fold in model.folds:
            files.append(model.checkpoint(fold).relative_to(folder).as_posix())
    return files


def checkpoint_hashes(folder: Path, models: tuple[NnunetModel, ...] | None = None, *,
                      fresh: bool = False) -> dict[str, str]:
    """SHA-256 of each checkpoint of the pack in ``folder``, keyed by path relative to it.

    ``models`` are the pack's models (default: ``folder`` is one nnU-Net
    folder). Per-file hashes are cached in ``.segnode-weights.json`` keyed by
    size and mtime; ``fresh`` reads every file again (``segnode models
    verify``). A read-only folder is hashed every time.
    """
    cache_path = folder / _SHA_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    files = cache.get("files", {}) if isinstance(cache, dict) else {}
    hashes, changed = {}, False
    for rel in _checkpoint_files(folder, models):
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


def weights_sha256(folder: Path, models: tuple[NnunetModel, ...] | None = None) -> str:
    """SHA-256 identifying a pack's weights, computed once and cached.

    The value is the SHA-256 of the lines ``"<relative path>  <file sha256>\n"``
    for each checkpoint in model and fold order (``sha256sum`` format).

    Parameters
    ----------
    folder : pathlib.Path
        A pack folder.
    models : tuple of NnunetModel, optional
        The pack's models; default: ``folder`` is one nnU-Net folder.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    lines = [f"{rel}  {sha}\n" for rel, sha in checkpoint_hashes(folder, models).items()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def verify_checkpoints(pack: ModelPack) -> list[str]:
    """Re-read every checkpoint and compare it with the hashes recorded at install.

    Returns the problems, one line each (empty when everything matches).
    """
    meta_path = pack.folder / METADATA_FILE
    recorded = _read_json(meta_path).get("checkpoints") if meta_path.is_file() else None
    if not isinstance(recorded, dict) or not recorded:
        return [f"{pack.name}: no checkpoint hashes recorded (install it again to record them)"]
    current = checkpoint_hashes(pack.folder, pack.models, fresh=True)
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
    """Load a model pack: one nnU-Net v2 model folder, or a multi-model pack folder.

    Parameters
    ----------
    folder : pathlib.Path or str
        An nnU-Net folder (``plans.json``, ``dataset.json``,
        ``fold_N/checkpoint_final.pth``) or a pack folder whose
        ``segnode.json`` lists its ``models``.
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
        If a model folder is incomplete or the metadata is invalid.
    """
    folder = Path(folder).resolve()
    meta_path = folder / METADATA_FILE
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if "models" in meta:
        models = _declared_models(folder, meta["models"])
    elif is_nnunet_folder(folder):
        models = (NnunetModel(id="model", folder=folder, folds=find_folds(folder)),)
    else:
        raise ModelError(
            f"'{folder}' is not an nnU-Net v2 model folder - expected plans.json, dataset.json "
            f"and fold_N/{CHECKPOINT_NAME}."
        )
    pack_name = name or str(meta.get("name") or folder.name)
    own_table = folder / LABELS_JSON  # the pack's own codes (catalogue, segnode models add)
    if own_table.is_file():
        table = read_label_json(own_table, name=pack_name)
    elif len(models) == 1 and not models[0].label_map:
        table = table_from_dataset_json(dataset_labels(models[0].folder), name=pack_name)
    else:
        raise ModelError(f"Pack '{folder}' has several models but no {LABELS_JSON}.")
    _check_label_values(pack_name, models, table)
    return ModelPack(
        name=pack_name,
        version=_version_of(folder, meta),
        folder=folder,
        models=models,
        labels=table,
        weights_sha256=weights_sha256(folder, models),
        input_orientation=validate_orientation(str(meta.get("input_orientation", "LPS"))),
        description=str(meta.get("description", "")),
        builtin=builtin,
        licence=str(meta.get("licence", "")),
        modalities=tuple(str(m).upper() for m in meta.get("modalities", ())),
        regions=tuple(str(r) for r in meta.get("regions", ())),
        defaults=_defaults(meta.get("settings"), meta_path),
        archive_check=str(meta.get("archive_check", "")),
    )


def _declared_models(folder: Path, entries: Any) -> tuple[NnunetModel, ...]:
    where = folder / METADATA_FILE
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"'{where}': 'models' must be a non-empty list.")
    models = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("id") or not entry.get("folder"):
            raise ModelError(f"'{where}': models.{number} needs 'id' and 'folder'.")
        model_folder = (folder / str(entry["folder"])).resolve()
        if folder not in model_folder.parents and model_folder != folder:
            raise ModelError(f"'{where}': models.{number}.folder leaves the pack folder.")
        checkpoint = str(entry.get("checkpoint") or CHECKPOINT_NAME)
        if not is_nnunet_folder(model_folder, checkpoint):
            raise ModelError(f"Model '{entry['id']}' of '{folder}' is incomplete: "
                             f"'{model_folder}' needs plans.json, dataset.json and "
                             f"fold_N/{checkpoint}.")
        label_map = entry.get("label_map") or {}
        try:
            pairs = tuple(sorted((int(k), int(v)) for k, v in label_map.items()))
        except (AttributeError, TypeError, ValueError):
            raise ModelError(f"'{where}': models.{number}.label_map must map label values "
                             "to label values.") from None
        models.append(NnunetModel(
            id=str(entry["id"]), folder=model_folder,
            folds=find_folds(model_folder, checkpoint), checkpoint_name=checkpoint,
            trainer=entry.get("trainer"), configuration=entry.get("configuration"),
            label_map=pairs))
    return tuple(models)


def dataset_labels(folder: Path) -> dict[str, Any]:
    """The ``labels`` object of a model folder's ``dataset.json``."""
    labels = _read_json(folder / "dataset.json").get("labels")
    if not isinstance(labels, dict):
        raise ModelError(f"'{folder / 'dataset.json'}' has no 'labels' object.")
    return labels


def _check_label_values(pack_name: str, models: tuple[NnunetModel, ...],
                        table: LabelTable) -> None:
    """Every model's labels land on a structure of the pack's table."""
    for model in models:
        values = {int(v) for k, v in dataset_labels(model.folder).items()
                  if isinstance(v, int) and v != 0 and k.lower() != "ignore"}
        mapping = dict(model.label_map) or {v: v for v in values}
        unmapped = sorted(values - set(mapping))
        missing = sorted(v for v in mapping.values() if v not in table)
        if unmapped or missing:
            raise ModelError(
                f"Pack '{pack_name}', model '{model.id}': dataset.json label value(s) "
                f"{unmapped or missing} {'have no place in' if unmapped else 'map to no label of'}"
                " the pack's label table.")


def _defaults(settings: Any, where: Path) -> dict[str, InferenceDefaults]:
    if settings is None:
        return {}
    if not isinstance(settings, dict) or set(settings) - set(_DEVICE_TYPES):
        raise ModelError(f"'{where}': 'settings' must map {' / '.join(_DEVICE_TYPES)} to "
                         "folds and tile_step_size.")
    out = {}
    for device, values in settings.items():
        folds = values.get("folds")
        out[device] = InferenceDefaults(
            folds=None if folds is None else tuple(f if f == "all" else int(f) for f in folds),
            tile_step_size=values.get("tile_step_size"))
    return out


def _version_of(folder: Path, meta: dict[str, Any]) -> str:
    if meta.get("version") is not None:
        return str(meta["version"])
    version_json = folder / "version.json"
    if version_json.is_file():
        value = _read_json(version_json).get("weights_version")
        if value is not None:
            return str(value)
    return "unknown"
