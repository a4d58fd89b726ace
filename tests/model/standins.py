"""Stand-ins for the published packs: their archives as the publishers ship them, tiny weights.

For a shipped pack descriptor, :func:`write_standin_archives` writes each
archive with the model folders at the path the descriptor looks for (a glob's
``*`` becomes ``Standin``), each an nnU-Net folder with the pack's real label
map (the label names of the model's own values, the values 1..N), the
declared plans name, trainer, configuration and every released fold, and
seeded random weights of a tiny network (see :mod:`tests.model.conftest`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from model.descriptors import ModelEntry, PackDescriptor
from tests.model.conftest import write_tiny_model


def model_labels(item: PackDescriptor, entry: ModelEntry) -> dict[str, int]:
    """dataset.json labels of one model of the pack: background plus its own values."""
    table = item.label_table()
    return {"background": 0, **{table.by_index(pack_value).name: value
                                for value, pack_value in entry.label_map().items()}}


def _archive_members(item: PackDescriptor) -> list[list[ModelEntry]]:
    """Which models each archive holds: one each when the counts match, else all in the first."""
    if len(item.archives) == len(item.models):
        return [[entry] for entry in item.models]
    return [list(item.models), *([] for _ in item.archives[1:])]


def _write_model(item: PackDescriptor, entry: ModelEntry, root: Path, seed: int) -> None:
    inner = "." if entry.folder == "." else entry.folder.replace("*", "Standin")
    write_tiny_model(
        (root / inner).resolve(), labels=model_labels(item, entry),
        seed=seed + 10 * item.models.index(entry),
        folds=tuple(f for f in entry.folds if isinstance(f, int)), trainer=entry.trainer,
        configuration=entry.configuration, plans_name=entry.plans)


def write_standin_models(item: PackDescriptor, root: Path, *, seed: int = 0) -> Path:
    """Write the unpacked archive contents of ``item`` under ``root``; returns ``root``."""
    for entry in item.models:
        _write_model(item, entry, root, seed)
    return root


def write_standin_archives(item: PackDescriptor, folder: Path, *, seed: int = 0) -> Path:
    """Write the archives of ``item`` into ``folder`` under their file names; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for archive, entries in zip(item.archives, _archive_members(item), strict=True):
        content = folder / f".{archive.file}.content"
        for entry in entries:
            _write_model(item, entry, content, seed)
        with zipfile.ZipFile(folder / archive.file, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(content.rglob("*")):
                if path.is_file():
                    zf.write(path, str(path.relative_to(content)))
    return folder


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
