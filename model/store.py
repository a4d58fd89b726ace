"""The model store: installed model packs under one directory.

Layout: ``<root>/<name>/`` is a pack folder (see :mod:`model.packs`).
``<root>/.tmp/`` holds downloads and extractions in progress; it is on the
same filesystem, so a finished install is moved into place with one
``os.replace`` and nothing half-installed is ever visible under a pack name.
Work folders of installs that were killed are removed by the next install.

``install`` accepts the name of a shipped pack descriptor
(:mod:`model.descriptors`: ``mrsegmentator``, ``totalseg-mr``, ...), whose
archives are downloaded, or taken from ``from_path`` (a zip, a folder
holding the archives by their file names, or a folder with the unpacked
models), and verified against the descriptor's SHA-256; or a local
``.zip`` file, a ``file://``, ``http://`` or ``https://`` URL of a zip, or
a local model folder (copied). ``resolve(None)`` is the built-in ``"demo"``
pack: segnode never picks a model on its own; ``--model NAME`` selects
another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from segnode_errors import ModelError

from ._nnunet import validate_orientation
from .descriptors import Archive, ModelEntry, PackDescriptor, descriptor, descriptors
from .label_file import LABELS_JSON, read_label_file, write_label_json
from .labels import LabelTable, normalize_label_name
from .packs import (
    DEMO_PACK_DIR,
    DEMO_PACK_NAME,
    ModelPack,
    NnunetModel,
    checkpoint_hashes,
    dataset_labels,
    find_folds,
    is_nnunet_folder,
    load_pack,
    write_metadata,
)

__all__ = ["ModelStore"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_WORK_RE = re.compile(r"^.+-pid(\d+)-[^-]+$")


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
        hint = f" Run 'segnode models install {name}'." if descriptor(name) else ""
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
        table = read_label_file(labels_file, dataset_labels(folder), name=name)
        return self.install(str(folder), name=name, labels=table)

    def install(
        self, source: str, *, sha256: str | None = None, name: str | None = None,
        labels: LabelTable | None = None, from_path: Path | None = None,
    ) -> ModelPack:
        """Install a pack from a shipped descriptor, a zip file, a URL or a folder.

        Parameters
        ----------
        source : str
            The name of a shipped pack descriptor (``segnode models
            available``), a ``.zip`` path, a ``file://`` / ``http(s)://`` URL
            of a zip, or an nnU-Net model folder.
        sha256 : str, optional
            Expected SHA-256 (hex) of the zip. For a descriptor with one
            archive it replaces the descriptor's value (for weights the
            publisher gives no checksum for). Without any, the computed hash
            is logged and recorded.
        name : str, optional
            Pack name; default the descriptor's name, else the zip or folder stem.
        labels : LabelTable, optional
            The pack's own label table (``segnode models add``), stored as
            ``labels.json`` instead of matching ``dataset.json`` names.
        from_path : pathlib.Path, optional
            Descriptor packs only: where the archives already are (a zip, a
            folder holding them by file name, or a folder with the unpacked
            model folders) instead of downloading them.

        Returns
        -------
        ModelPack
            The installed pack, loaded from its final location.

        Raises
        ------
        ModelError
            On download failure, checksum mismatch, or if the source is not
            the model expected. Nothing is left under ``root/<name>`` then.
        """
        known = descriptor(source)
        if from_path is not None and known is None:
            raise ModelError(f"'--from' needs the name of a shipped pack "
                             f"({', '.join(sorted(descriptors()))}), received '{source}'.")
        pack_name = name or (known.name if known else _stem(source))
        if not _valid_name(pack_name) or pack_name == DEMO_PACK_NAME:
            raise ModelError(f"Invalid pack name '{pack_name}' - use letters, digits, '-', '_', "
                             f"'.'; '{DEMO_PACK_NAME}' is reserved.")
        tmp_root = self._root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_work(tmp_root)
        work = Path(tempfile.mkdtemp(prefix=f"{pack_name}-pid{os.getpid()}-", dir=tmp_root))
        try:
            if known is not None:
                folder = self._stage_descriptor(known, pack_name, from_path, sha256, work)
            else:
                folder = self._stage_folder(source, sha256, pack_name, labels, work)
            load_pack(folder, name=pack_name)  # validates labels, computes weight hashes
            self._move_into_place(folder, pack_name, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        pack = load_pack(self._root / pack_name, name=pack_name)
        logger.info("Installed model pack '%s' %s into %s.", pack.name, pack.version, pack.folder)
        return pack

    # -- staging ------------------------------------------------------------

    def _stage_folder(self, source: str, sha256: str | None, pack_name: str,
                      labels: LabelTable | None, work: Path) -> Path:
        """A single nnU-Net folder from a zip, URL or folder, with its metadata."""
        expected = (sha256 or "").lower() or None
        folder, archive_sha256 = self._stage(source, expected, work)
        write_metadata(
            folder, name=pack_name,
            input_orientation=validate_orientation(_orientation_or_default(folder)),
            source=source, archive_sha256=archive_sha256,
            archive_check=_archive_check([expected] if archive_sha256 else []),
            checkpoints=checkpoint_hashes(folder, fresh=True),
        )
        if labels is not None:
            write_label_json(labels, folder / LABELS_JSON)
        return folder

    def _stage_descriptor(self, known: PackDescriptor, pack_name: str, from_path: Path | None,
                          sha256: str | None, work: Path) -> Path:
        """Fetch, verify and unpack a descriptor's archives; assemble the pack folder."""
        if sha256 is not None and len(known.archives) != 1:
            raise ModelError(f"'--sha256' names one archive, but '{known.name}' has "
                             f"{len(known.archives)}: {', '.join(a.file for a in known.archives)}.")
        if not known.commercial_use:
            logger.warning("'%s' weights are licensed %s: non-commercial use only.",
                           known.name, known.licence)
        unpacked = work / "unpacked"
        unpacked.mkdir()
        archives: dict[str, str | None] = {}
        expected_sums: list[str | None] = []
        if from_path is not None and Path(from_path).is_dir() and not all(
                (Path(from_path) / a.file).is_file() for a in known.archives):
            logger.warning("'%s' holds unpacked models, not the archives %s: no archive "
                           "checksum can be checked.", from_path,
                           ", ".join(a.file for a in known.archives))
            shutil.copytree(from_path, unpacked, dirs_exist_ok=True)
            archives = dict.fromkeys((a.file for a in known.archives), None)
        else:
            for archive in known.archives:
                local = self._archive(known, archive, from_path, work)
                expected = (sha256 or archive.sha256 or "").lower() or None
                expected_sums.append(expected)
                archives[archive.file] = _verify_sha256(local, expected, str(local))
                _unzip(local, unpacked)
        pack = work / "pack"
        pack.mkdir()
        entries = []
        for entry in known.models:
            model_folder = _locate_model(unpacked, entry, known.name)
            _check_model(model_folder, entry, known)
            os.replace(model_folder, pack / entry.id)
            entries.append({
                "id": entry.id, "folder": entry.id, "checkpoint": entry.checkpoint,
                "trainer": entry.trainer, "configuration": entry.configuration,
                "plans": entry.plans,
                "label_map": {str(k): v for k, v in entry.label_map().items()},
            })
        write_label_json(known.label_table(), pack / LABELS_JSON)
        models = tuple(NnunetModel(id=e["id"], folder=pack / e["id"],
                                   folds=find_folds(pack / e["id"], e["checkpoint"]),
                                   checkpoint_name=e["checkpoint"]) for e in entries)
        write_metadata(pack, **{**known.metadata(), "name": pack_name}, models=entries,
                       source=f"pack descriptor {known.name}", archives=archives,
                       archive_check=_archive_check(expected_sums),
                       checkpoints=checkpoint_hashes(pack, models, fresh=True))
        return pack

    @staticmethod
    def _archive(known: PackDescriptor, archive: Archive, from_path: Path | None,
                 work: Path) -> Path:
        """The local file of one archive: given, found in the folder given, or downloaded."""
        if from_path is not None:
            given = Path(from_path)
            if given.is_dir():
                return given / archive.file
            if len(known.archives) > 1:
                raise ModelError(f"'{known.name}' has {len(known.archives)} archives "
                                 f"({', '.join(a.file for a in known.archives)}): give "
                                 "'--from' a folder holding them.")
            if not given.is_file():
                raise ModelError(f"'{given}' does not exist.")
            return given
        if archive.url is None:
            raise ModelError(f"'{known.name}' weights cannot be downloaded by segnode: "
                             f"{known.manual_download}")
        return _download(archive.url, work / archive.file)

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
            raise ModelError(f"Invalid model source '{source}' - not a shipped pack "
                             f"({', '.join(sorted(descriptors()))}), a zip file, a folder or a "
                             "URL.")
        received = _verify_sha256(archive, expected, source)
        return _extract_model(archive, work / "unpacked"), received

    def _move_into_place(self, folder: Path, pack_name: str, work: Path) -> None:
        target = self._root / pack_name
        if target.exists():
            old = work / "previous"
            os.replace(target, old)
            logger.info("Replacing installed pack '%s'.", pack_name)
        os.replace(folder, target)


def _archive_check(expected: list[str | None]) -> str:
    """``checked`` when every archive matched a given SHA-256, ``recorded`` when some had
    none to match, ``none`` when there was no archive (a folder was installed)."""
    if not expected:
        return "none"
    return "checked" if all(expected) else "recorded"


def _remove_abandoned_work(tmp_root: Path) -> None:
    """Delete work folders of installs whose process is gone (killed mid-install)."""
    for child in tmp_root.iterdir():
        match = _WORK_RE.match(child.name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            logger.info("Removing '%s', left by an interrupted install.", child)
            shutil.rmtree(child, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _locate_model(root: Path, entry: ModelEntry, pack: str) -> Path:
    """The one folder under ``root`` matching ``entry.folder`` that is an nnU-Net model."""
    if entry.folder == ".":
        candidates = sorted(p.parent for p in root.rglob("plans.json"))
    else:
        candidates = sorted({*root.glob(entry.folder), *root.glob(f"**/{entry.folder}")})
    found = [p for p in candidates if p.is_dir() and is_nnunet_folder(p, entry.checkpoint)]
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(root)) for p in found)
        raise ModelError(
            f"Pack '{pack}', model '{entry.id}': {len(found) or 'no'} nnU-Net model folder(s) "
            f"matching '{entry.folder}' (plans.json, dataset.json, fold_N/{entry.checkpoint}) "
            f"in the archive{': ' + listed if found else ''}."
        )
    return found[0]


def _check_model(folder: Path, entry: ModelEntry, known: PackDescriptor) -> None:
    """The model is the one the descriptor describes: plans, label values, folds."""
    from .packs import _read_json

    where = f"Pack '{known.name}', model '{entry.id}'"
    plans_name = _read_json(folder / "plans.json").get("plans_name")
    if entry.plans is not None and plans_name != entry.plans:
        raise ModelError(f"{where}: plans.json is '{plans_name}', expected '{entry.plans}'.")
    labels = dataset_labels(folder)
    values = sorted(v for k, v in labels.items() if isinstance(v, int) and v != 0)
    if values != list(range(1, entry.label_count + 1)):
        raise ModelError(f"{where}: dataset.json has label values {values}, expected "
                         f"1..{entry.label_count}.")
    table = known.label_table()
    for label_name, value in labels.items():
        if not isinstance(value, int) or value == 0:
            continue
        expected = table.by_index(value + entry.label_offset).name
        if normalize_label_name(label_name) != normalize_label_name(expected):
            logger.warning("%s: dataset.json calls label %d '%s'; the pack's table says '%s'.",
                           where, value, label_name, expected)
    missing = [f for f in entry.folds if f not in find_folds(folder, entry.checkpoint)]
    if missing:
        logger.warning("%s: fold(s) %s of the release are missing; installing the others.",
                       where, missing)


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


def _unzip(archive: Path, target: Path) -> None:
    """Extract a zip into ``target``, refusing absolute paths and ``..``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = Path(member).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise ModelError(f"'{archive.name}' holds an unsafe path '{member}'.")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"'{archive.name}' is not a valid zip file: {exc}") from exc


def _extract_model(archive: Path, target: Path) -> Path:
    """Extract a zip safely and return the one folder holding an nnU-Net model."""
    _unzip(archive, target)
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
