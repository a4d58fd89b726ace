"""``segnode models``: the model store from the command line (list, install, verify, ...).

Apart from :mod:`node.commands` so that these commands never import torch or
the pipeline: they answer in about a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node.settings import default_models_dir

if TYPE_CHECKING:
    from model.store import ModelStore

__all__ = ["models", "models_dir_of"]


def models_dir_of(args: argparse.Namespace) -> Path:
    """``--models-dir``, else ``SEGNODE_MODELS_DIR``, else the per-user default."""
    if args.models_dir is not None:
        return args.models_dir
    from_env = os.environ.get("SEGNODE_MODELS_DIR")
    return Path(from_env) if from_env else default_models_dir()


def models(args: argparse.Namespace) -> int:
    """``segnode models list|available|show|install|add|verify``."""
    from model.packs import verify_checkpoints
    from model.store import ModelStore

    store = ModelStore(models_dir_of(args))
    out = sys.stdout
    if args.models_command == "install":
        pack = store.install(args.source, sha256=args.sha256, name=args.name,
                             from_path=args.from_path)
        out.write(f"installed {pack.name} {pack.version} in {pack.folder}\n"
                  f"licence: {pack.licence or 'unknown'}\n")
        return 0
    if args.models_command == "add":
        pack = store.add(args.name, args.nnunet_folder, args.labels)
        out.write(f"added {pack.name} ({len(pack.labels)} labels) in {pack.folder}\n")
        return 0
    if args.models_command == "verify":
        packs = [store.resolve(name) for name in args.names] or store.list()
        failed = 0
        for pack in packs:
            problems = verify_checkpoints(pack)
            failed += bool(problems)
            count = sum(len(m.folds) for m in pack.models)
            for line in problems or [f"{pack.name}: {count} checkpoint(s) verified"]:
                out.write(line + "\n")
        return 1 if failed else 0
    if args.models_command == "available":
        _write_available(store)
        return 0
    if args.models_command == "show":
        _write_pack(store, args.name)
        return 0
    for pack in store.list():
        out.write(
            f"{pack.name:26s} {pack.version:14s} {len(pack.models)} model(s) folds "
            f"{','.join(map(str, pack.folds)):10s} {len(pack.labels.structures):3d} labels  "
            f"sha256 {pack.weights_sha256[:12]} archive {pack.archive_check or 'built-in':8s} "
            f"{'/'.join(pack.modalities) or 'any':5s} "
            f"licence {pack.licence or 'unknown'}  {pack.folder}\n"
        )
    return 0


def _write_available(store: ModelStore) -> None:
    from model.descriptors import descriptors

    installed = {p.name for p in store.list()}
    for item in descriptors().values():
        fetch = "download" if all(a.url for a in item.archives) else "manual download"
        state = "installed" if item.name in installed else fetch
        sums = "sha256 pinned" if all(a.sha256 for a in item.archives) else "no published sha256"
        sys.stdout.write(f"{item.name:26s} {item.version:14s} {'/'.join(item.modalities):5s} "
                         f"{len(item.labels):3d} labels  {state:15s} {sums:20s} "
                         f"licence {item.licence}\n")


def _write_pack(store: ModelStore, name: str) -> None:
    """Print a pack's description: installed state, models, settings, labels and caveats."""
    from model.descriptors import descriptor
    from segnode_errors import ModelError

    item = descriptor(name)
    try:
        pack = store.resolve(name)
    except ModelError:
        if item is None:
            raise
        pack = None
    out = sys.stdout
    if pack is not None:
        out.write(f"{pack.name} {pack.version} installed in {pack.folder}\n"
                  f"weights sha256 {pack.weights_sha256}\n")
        for model in pack.models:
            out.write(f"  model {model.id}: folds {','.join(map(str, model.folds))}, "
                      f"trainer {model.trainer or 'as in its checkpoints'}\n")
        table, licence = pack.labels, pack.licence
        orientation, modalities = pack.input_orientation, pack.modalities
    else:
        assert item is not None
        out.write(f"{item.name} {item.version}: not installed\n")
        table, licence = item.label_table(), item.licence
        orientation, modalities = item.input_orientation, item.modalities
    out.write(f"licence {licence or 'unknown'}; input orientation {orientation}; "
              f"modalities {', '.join(modalities) or 'any'}\n")
    if item is not None:
        for archive in item.archives:
            out.write(f"  archive {archive.file}: {archive.url or 'manual download'} "
                      f"sha256 {archive.sha256 or 'not published'}\n")
        for device in ("cuda", "cpu"):
            settings = getattr(item.settings, device)
            out.write(f"  recommended on {device}: folds {settings.folds}, "
                      f"tile step {settings.tile_step_size}\n")
        if item.manual_download:
            out.write(f"  {item.manual_download}\n")
        for caveat in item.caveats:
            out.write(f"  caveat: {caveat}\n")
    for s in table.structures:
        side = f" {s.laterality}" if s.laterality else ""
        region = f" in {s.region.meaning} ({s.region.value})" if s.region else ""
        out.write(f"  {s.index:3d} {s.name:32s} {s.type_code.value:>11s} {s.type_code.meaning}"
                  f"{side}{region}  [{s.category.meaning}]  rgb {s.rgb}\n")
