"""A site's own label table: ``labels.yaml`` in, ``labels.json`` in the pack.

``labels.yaml`` gives every label value of a site's own nnU-Net model its
name, SNOMED CT code, laterality and display colour::

    labels:
      1: {name: liver, code: "10200004", meaning: Liver, colour: [221, 130, 101]}
      2: {name: left_kidney, code: "64033007", meaning: Kidney, laterality: left,
          colour: [185, 102, 83]}
      3: {name: fat, code: "55603005", meaning: Fat,
          category: {code: "85756007", meaning: Tissue}, colour: [230, 220, 120]}

``category`` defaults to SCT 91723000 "Anatomical Structure";
``laterality`` is left, right or bilateral; ``region`` (optional, a code and
meaning like ``category``) is the anatomic region of a tissue class. Every code must
be a valid SNOMED CT concept identifier (:mod:`model.sctid`), left/right
pairs share the code, colours are unique, and the values must be exactly the
model's own (``dataset.json``, background excluded). Any problem is refused
with the file, the label and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from segnode_errors import ModelError

from .labels import ANATOMICAL_STRUCTURE, Code, LabelTable, Structure, _laterality_of
from .sctid import is_valid_sctid

__all__ = ["LABELS_JSON", "read_label_file", "table_from_entries", "write_label_json",
           "read_label_json"]

#: The normalised label table inside a pack folder.
LABELS_JSON = "labels.json"

_KEYS = {"name", "code", "meaning", "laterality", "colour", "category", "region"}
_LATERALITIES = (None, "left", "right", "bilateral")


def _code(value: Any, meaning: Any, where: str) -> Code:
    text = str(value or "").strip()
    if not is_valid_sctid(text):
        raise ModelError(f"{where}: code {text!r} is not a valid SNOMED CT concept identifier "
                         "(6-18 digits, concept partition, Verhoeff check digit).")
    if not str(meaning or "").strip():
        raise ModelError(f"{where}: 'meaning' is missing for code {text}.")
    return Code(text, "SCT", str(meaning).strip())


def _colour(value: Any, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
        raise ModelError(f"{where}: 'colour' must be three integers 0..255, got {value!r}.")
    return (int(value[0]), int(value[1]), int(value[2]))


def _structure(value: int, entry: Any, where: str) -> Structure:
    if not isinstance(entry, Mapping):
        raise ModelError(f"{where}: must be a mapping with name, code, meaning, colour.")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {', '.join(unknown)} "
                         f"(allowed: {', '.join(sorted(_KEYS))}).")
    name = str(entry.get("name") or "").strip()
    if not name:
        raise ModelError(f"{where}: 'name' is missing.")
    laterality = entry.get("laterality")
    if laterality not in _LATERALITIES:
        raise ModelError(f"{where}: 'laterality' must be left, right, bilateral or absent, "
                         f"got {laterality!r}.")
    return Structure(index=value, name=name,
                     type_code=_code(entry.get("code"), entry.get("meaning"), where),
                     laterality=laterality, rgb=_colour(entry.get("colour"), where),
                     category=_nested_code(entry, "category", where) or ANATOMICAL_STRUCTURE,
                     region=_nested_code(entry, "region", where))


def _nested_code(entry: Mapping[str, Any], key: str, where: str) -> Code | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"code", "meaning"}:
        raise ModelError(f"{where}: '{key}' must be a mapping with code and meaning.")
    return _code(value.get("code"), value.get("meaning"), f"{where} {key}")


def _check_table(structures: list[Structure], source: str) -> None:
    seen: dict[tuple[int, int, int], str] = {}
    for structure in structures:
        other = seen.setdefault(structure.rgb, structure.name)
        if other != structure.name:
            raise ModelError(f"{source}: '{structure.name}' and '{other}' share the colour "
                             f"{list(structure.rgb)}; every structure needs its own.")
    by_name = {s.name: s for s in structures}
    for structure in structures:
        side = _laterality_of(structure.name)
        if side is not None and structure.laterality != side:
            raise ModelError(f"{source}: '{structure.name}' names the {side} side but its "
                             f"laterality is {structure.laterality or 'absent'}.")
        if structure.laterality not in ("left", "right"):
            continue
        opposite = "right" if structure.laterality == "left" else "left"
        twin = by_name.get(structure.name.replace(structure.laterality, opposite))
        if twin is not None and twin.type_code.value != structure.type_code.value:
            raise ModelError(f"{source}: '{structure.name}' and '{twin.name}' must share their "
                             "code and differ only in laterality.")


def table_from_entries(entries: Any, source: str, *, name: str) -> LabelTable:
    """Validate a ``labels`` mapping (value -> entry) and build its label table.

    ``source`` names where the entries come from in every error message.

    Raises
    ------
    ModelError
        When an entry is invalid, colours repeat or left/right twins differ in code.
    """
    if not isinstance(entries, Mapping) or not entries:
        raise ModelError(f"'{source}' must hold a non-empty 'labels' mapping.")
    structures = []
    for key, entry in entries.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            raise ModelError(f"{source}: label value {key!r} must be an integer >= 1.")
        structures.append(_structure(key, entry, f"{source}: label {key}"))
    _check_table(structures, source)
    try:
        return LabelTable(name, structures)
    except ValueError as exc:
        raise ModelError(f"{source}: {exc}") from None


def read_label_file(path: Path, model_labels: Mapping[str, int], *, name: str) -> LabelTable:
    """Read ``labels.yaml`` for a model whose ``dataset.json`` labels are ``model_labels``.

    Raises
    ------
    ModelError
        When the file cannot be read, an entry is invalid, or the values are
        not exactly the model's (naming the file, the label and the problem).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"Label file '{path}' cannot be read: {exc}") from None
    entries = raw.get("labels") if isinstance(raw, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise ModelError(f"Label file '{path}' must hold a non-empty 'labels' mapping.")
    table = table_from_entries(entries, str(path), name=name)
    expected = {int(v) for k, v in model_labels.items()
                if isinstance(v, int) and v != 0 and k.lower() != "ignore"}
    given = {s.index for s in table.structures}
    if given != expected:
        raise ModelError(f"{path}: label values {sorted(given)} differ from the model's "
                         f"dataset.json {sorted(expected)} (missing: "
                         f"{sorted(expected - given)}, extra: {sorted(given - expected)}).")
    return table


def _code_dict(code: Code) -> dict[str, str]:
    return {"value": code.value, "scheme": code.scheme, "meaning": code.meaning}


def write_label_json(table: LabelTable, path: Path) -> None:
    """Store a label table as the pack's ``labels.json``."""
    rows = [{"index": s.index, "name": s.name, "type_code": _code_dict(s.type_code),
             "category": _code_dict(s.category), "laterality": s.laterality,
             "rgb": list(s.rgb), "region": _code_dict(s.region) if s.region else None}
            for s in table.structures]
    Path(path).write_text(json.dumps({"structures": rows}, indent=2) + "\n", encoding="utf-8")


def read_label_json(path: Path, *, name: str) -> LabelTable:
    """Load a pack's ``labels.json`` (written by :func:`write_label_json`)."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["structures"]
        return LabelTable(name, [
            Structure(index=int(r["index"]), name=str(r["name"]),
                      type_code=Code(**r["type_code"]), category=Code(**r["category"]),
                      laterality=r["laterality"], rgb=tuple(r["rgb"]),
                      region=Code(**r["region"]) if r.get("region") else None)
            for r in rows])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"Label table '{path}' is damaged: {exc}") from None
