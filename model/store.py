"""The model store: installed model packs under one directory.

Layout: ``<root>/<name>/`` is an nnU-Net model folder (see :mod:`model.packs`).
``<root>/.tmp/`` holds downloads and extractions in progress; it is on the
same filesystem, so a finished install is moved into place with one
``os.replace`` and nothing half-installed is ever visible under a pack name.

``install`` accepts a known release name (``mrsegmentator``), a local
``.zip`` file, a ``file://``, ``http://`` or ``https://`` URL of a zip, or a
local model folder (copied). ``resolve(None)`` is the built-in ``"demo"``
pack: segnode never picks a model on its own; ``--model NAME`` selects
another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from segnode_errors import ModelError

from ._nnunet import validate_orientation
from .label_file import LABELS_JSON, read_label_file, write_label_json
from .labels import LabelTable
from .packs import (
    DEMO_PACK_DIR,
    DEMO_PACK_NAME,
    ModelPack,
    checkpoint_hashes,
    is_nnunet_folder,
    load_pack,
    write_metadata,
)

__all__ = ["KNOWN_RELEASES", "KnownRelease", "ModelStore"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class KnownRelease:
    """A published model release that ``install NAME`` fetches.

    Attributes
    ----------
    name, version, url, sha256, input_orientation, licence, description : str
        Pack metadata; ``sha256`` is the SHA-256 of the zip at ``url``.
    source : str
        Where ``url`` and ``sha256`` were taken from.
    """

    name: str
    version: str
    url: str
    sha256: str
    input_orientation: str
    licence: str
    description: str
    source: str


KNOWN_RELEASES: dict[str, KnownRelease] = {
    "mrsegmentator": KnownRelease(
        name="mrsegmentator",
        version="1.2",
        url="https://github.com/hhaentze/MRSegmentator/releases/download/v1.2.0/weights.zip",
        sha256="dd26c1b511908a1f2a752b7fe8f5ca9c5603fc3e69fa52f57bf3ccdd52ceb286",
        input_orientation="LPS",
        licence="Apache-2.0",
        description="MRSegmentator 40 structures, MR and CT (nnU-Net v2, 5 folds)",
        source="hhaentze/MRSegmentator src/mrsegmentator/config.py MODEL_REGISTRY['base']",
    ),
}


class ModelStore:
    """Installed model packs under ``root``, plus the built-in demo pack.

    Parameters
    ----------
    root : pathlib.Path
        The models directory (created on first install).
    demo_folder : pathlib.Path, optional
        Folder of the built-in ``"demo"`` pack (``model/demo_model``).
    """

    def __init__(self, root: Path | str, *, demo_folder: Path | None = None) -> None:
        self._root = Path(root)
        self._demo = DEMO_PACK_DIR if demo_folder is None else Path(demo_folder)

    @property
    def root(self) -> Path:
        """pathlib.Path: the models directory."""
        return self._root

    def list(self) -> list[ModelPack]:
        """Return the demo pack (if present) and every installed pack, by name.

        Folders under ``root`` that are not valid packs are logged and skipped.
        """
        packs: list[ModelPack] = []
        if is_nnunet_folder(self._demo):
            packs.append(load_pack(self._demo, name=DEMO_PACK_NAME, builtin=True))
        if self._root.is_dir():
            for child in sorted(self._root.iterdir()):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                try:
                    packs.append(load_pack(child, name=child.name))
                except ModelError as exc:
                    logger.warning("Skipping '%s': %s", child, exc)
        return packs

    def resolve(self, name_or_path: str | None) -> ModelPack:
        """Find a pack by name, or load a model folder given by path.

        Parameters
        ----------
        name_or_path : str or None
            ``None`` or ``"demo"``: the built-in demo pack. Otherwise the
            name of an installed pack, or the path of an nnU-Net model folder.

        Returns
        -------
        ModelPack

        Raises
        ------
        ModelError
            If nothing matches.
        """
        name = DEMO_PACK_NAME if name_or_path is None else str(name_or_path)
        if name == DEMO_PACK_NAME:
            if not is_nnunet_folder(self._demo):
                raise ModelError(f"The built-in demo model is missing from '{self._demo}'.")
            return load_pack(self._demo, name=DEMO_PACK_NAME, builtin=True)
        if _valid_name(name) and (self._root / name).is_dir():
            return load_pack(self._root / name, name=name)
        if Path(name).is_dir():
            return load_pack(Path(name))
        known = [p.name for p in self.list()]
        hint = " Run 'segnode models install NAME'." if name in KNOWN_RELEASES else ""
        raise ModelError(
            f"Invalid 'model' value '{name}' - not an installed pack or a model folder; "
            f"installed: {known}.{hint}"
        )

    def add(self, name: str, nnunet_folder: Path, labels_file: Path) -> ModelPack:
        """Register a site's own nnU-Net v2 model folder with its ``labels.yaml``.

        The folder is copied into the store with the label table validated
        (see :mod:`model.label_file`) and stored as ``labels.json``.

        Raises
        ------
        ModelError
            If the folder is not an nnU-Net model or the label file is
            invalid; nothing is installed then.
        """
        folder = Path(nnunet_folder)
        if not is_nnunet_folder(folder):
            raise ModelError(f"'{folder}' is not an nnU-Net v2 model folder - expected "
                             "plans.json, dataset.json and fold_N/checkpoint_final.pth.")
        dataset_labels = _read_dataset_labels(folder)
        table = read_label_file(labels_file, dataset_labels, name=name)
        return self.install(str(folder), name=name, labels=table)

    def install(
        self, source: str, *, sha256: str | None = None, name: str | None = None,
        labels: LabelTable | None = None,
    ) -> ModelPack:
        """Install a pack from a release name, zip file, URL or folder.

        Parameters
        ----------
        source : str
            A key of :data:`KNOWN_RELEASES`, a ``.zip`` path, a ``file://`` /
            ``http(s)://`` URL of a zip, or an nnU-Net model folder.
        sha256 : str, optional
            Expected SHA-256 (hex) of the zip; a known release's own value
            is used when omitted. Without any, the computed hash is logged.
        name : str, optional
            Pack name; default the release name, else the zip or folder stem.
        labels : LabelTable, optional
            The pack's own label table (``segnode models add``), stored as
            ``labels.json`` instead of matching ``dataset.json`` names.

        Returns
        -------
        ModelPack
            The installed pack, loaded from its final location.

        Raises
        ------
        ModelError
            On download failure, checksum mismatch, or if the source is not
            an nnU-Net model. Nothing is left under ``root/<name>`` then.
        """
        release = KNOWN_RELEASES.get(source)
        expected = (sha256 or (release.sha256 if release else None) or "").lower() or None
        pack_name = name or (release.name if release else _stem(source))
        if not _valid_name(pack_name) or pack_name == DEMO_PACK_NAME:
            raise ModelError(f"Invalid pack name '{pack_name}' - use letters, digits, '-', '_', "
                             f"'.'; '{DEMO_PACK_NAME}' is reserved.")
        tmp_root = self._root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{pack_name}-", dir=tmp_root))
        try:
            folder, archive_sha256 = self._stage(release.url if release else source, expected,
                                                 work)
            write_metadata(
                folder, name=pack_name,
                version=release.version if release else None,
                description=release.description if release else None,
                input_orientation=validate_orientation(
                    release.input_orientation if release else _orientation_or_default(folder)),
                licence=release.licence if release else None,
                source=release.url if release else source,
                archive_sha256=archive_sha256,
                checkpoints=checkpoint_hashes(folder, fresh=True),
            )
            if labels is not None:
                write_label_json(labels, folder / LABELS_JSON)
            load_pack(folder, name=pack_name)  # validates labels, computes weight hashes
            self._move_into_place(folder, pack_name, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        pack = load_pack(self._root / pack_name, name=pack_name)
        logger.info("Installed model pack '%s' %s into %s.", pack.name, pack.version, pack.folder)
        return pack

    # -- staging ------------------------------------------------------------

    def _stage(self, source: str, expected: str | None, work: Path) -> tuple[Path, str | None]:
        """Fetch/verify/extract ``source`` inside ``work``; the model folder and zip SHA-256."""
        local = Path(source)
        if "://" not in source and local.is_dir():
            if not is_nnunet_folder(local):
                raise ModelError(f"'{source}' is not an nnU-Net v2 model folder.")
            target = work / "pack"
            shutil.copytree(local, target)
            return target, None
        if "://" in source:
            archive = _download(source, work / "download.zip")
        elif local.is_file():
            archive = local
        else:
            raise ModelError(f"Invalid model source '{source}' - not a known release "
                             f"({sorted(KNOWN_RELEASES)}), a zip file, a folder or a URL.")
        received = _verify_sha256(archive, expected, source)
        return _extract_model(archive, work / "unpacked"), received

    def _move_into_place(self, folder: Path, pack_name: str, work: Path) -> None:
        target = self._root / pack_name
        if target.exists():
            old = work / "previous"
            os.replace(target, old)
            logger.info("Replacing installed pack '%s'.", pack_name)
        os.replace(folder, target)


def _read_dataset_labels(folder: Path) -> dict[str, int]:
    from .packs import _read_json

    labels = _read_json(folder / "dataset.json").get("labels")
    if not isinstance(labels, dict):
        raise ModelError(f"'{folder / 'dataset.json'}' has no 'labels' object.")
    return labels


def _valid_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all(
        c.isalnum() or c in "-_." for c in name)


def _stem(source: str) -> str:
    path = urllib.parse.urlparse(source).path if "://" in source else source
    stem = Path(path.rstrip("/")).name
    return stem[:-4] if stem.lower().endswith(".zip") else stem


def _orientation_or_default(folder: Path) -> str:
    from .packs import METADATA_FILE, _read_json

    meta = folder / METADATA_FILE
    return str(_read_json(meta).get("input_orientation", "LPS")) if meta.is_file() else "LPS"


def _download(url: str, target: Path) -> Path:
    """Stream ``url`` (file, http, https) to ``target``."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("file", "http", "https"):
        raise ModelError(f"Invalid URL '{url}' - expected file://, http:// or https://.")
    logger.info("Downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not download '{url}': {exc}") from exc
    return target


def _verify_sha256(archive: Path, expected: str | None, source: str) -> str:
    digest = hashlib.sha256()
    with archive.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    received = digest.hexdigest()
    if expected is None:
        logger.warning("No SHA-256 given for '%s'; its SHA-256 is %s.", source, received)
    elif received != expected:
        raise ModelError(
            f"Checksum mismatch for '{source}' - expected SHA-256 {expected}, received {received}. "
            "Nothing was installed."
        )
    return received


def _extract_model(archive: Path, target: Path) -> Path:
    """Extract a zip safely and return the one folder holding an nnU-Net model."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = Path(member).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise ModelError(f"'{archive.name}' holds an unsafe path '{member}'.")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"'{archive.name}' is not a valid zip file: {exc}") from exc
    candidates = sorted(p.parent for p in target.rglob("plans.json") if is_nnunet_folder(p.parent))
    if not candidates:
        raise ModelError(
            f"'{archive.name}' is not an nnU-Net v2 model - found no folder with plans.json, "
            "dataset.json and fold_N/checkpoint_final.pth."
        )
    if len(candidates) > 1:
        raise ModelError(f"'{archive.name}' holds several model folders: "
                         f"{[str(c.relative_to(target)) for c in candidates]}.")
    return candidates[0]
