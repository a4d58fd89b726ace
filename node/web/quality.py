"""The model-quality page's documents: what radiologists' corrections say of each pack.

Per model pack and structure, over every scored correction: how many cases,
how many the radiologist changed, the distribution of Dice, HD95 and volume
change (median and quartiles), vessel connectivity before and after
correction, and the same per ISO week (the drift view). Every figure links to
the cases behind it (:func:`quality_cases`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from node.catalogue import Catalogue

__all__ = ["quality", "quality_cases"]


def _quartiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": round(float(median), 4), "q1": round(float(q1), 4),
            "q3": round(float(q3), 4)}


def _week(timestamp: float) -> str:
    year, week, _ = dt.datetime.fromtimestamp(timestamp).isocalendar()
    return f"{year}-W{week:02d}"


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    changes = [100.0 * abs(r["corrected_volume_ml"] - r["volume_ml"]) / r["volume_ml"]
               for r in rows if r["volume_ml"] > 0]
    vessels = [r for r in rows if r["connected"] is not None]
    return {
        "cases": len(rows),
        "corrected": sum(1 for r in rows if r["dice"] < 1.0),
        "dice": _quartiles([r["dice"] for r in rows]),
        "hd95_mm": _quartiles([r["hd95_mm"] for r in rows if r["hd95_mm"] is not None]),
        "volume_change_pct": _quartiles(changes),
        "one_component": (None if not vessels else
                          round(sum(bool(r["connected"]) for r in vessels) / len(vessels), 4)),
        "corrected_one_component": (
            None if not vessels else
            round(sum(bool(r["corrected_connected"]) for r in vessels) / len(vessels), 4)),
    }


def quality(catalogue: Catalogue, model: str | None = None) -> dict[str, Any]:
    """Per pack: every structure's summary, the most corrected ones, and weekly medians."""
    metrics = catalogue.correction_metrics(model=model)
    packs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in metrics:
        packs.setdefault(row["model"], {}).setdefault(row["structure"], []).append(row)
    document: dict[str, Any] = {"packs": []}
    for name, structures in sorted(packs.items()):
        summaries = [{"structure": structure, "label": rows[0]["label"], **_summary(rows)}
                     for structure, rows in sorted(structures.items(),
                                                   key=lambda item: item[1][0]["label"])]
        weeks: dict[str, dict[str, list[float]]] = {}
        for structure, rows in structures.items():
            for row in rows:
                weeks.setdefault(_week(row["examined_at"]), {}).setdefault(
                    structure, []).append(row["dice"])
        most = sorted((s for s in summaries if s["corrected"]),
                      key=lambda s: (-s["corrected"], s["dice"]["median"]))[:10]
        document["packs"].append({
            "model": name,
            "corrections": len({r["correction_id"] for rows in structures.values()
                                for r in rows}),
            "structures": summaries,
            "most_corrected": [{"structure": s["structure"], "corrected": s["corrected"],
                                "cases": s["cases"], "median_dice": s["dice"]["median"]}
                               for s in most],
            "weeks": [{"week": week, "median_dice": {
                structure: round(float(np.median(values)), 4)
                for structure, values in sorted(by_structure.items())}}
                for week, by_structure in sorted(weeks.items())],
        })
    document["recent"] = [
        {key: row[key] for key in ("id", "state", "reason", "job_id", "model", "examined_at",
                                   "source_series_uid", "corrected_structures")}
        | {"unmapped": [f"{u['segment']}: {u['reason']}" for u in row["unmapped"]]}
        for row in catalogue.list_corrections(limit=50)]
    return document


def quality_cases(catalogue: Catalogue, model: str, structure: str) -> list[dict[str, Any]]:
    """Every scored correction of one pack's structure: the cases behind its figures."""
    return [{key: row[key] for key in (
        "correction_id", "job_id", "source_series_uid", "examined_at", "dice", "hd95_mm",
        "volume_ml", "corrected_volume_ml", "connected", "corrected_connected")}
        for row in catalogue.correction_metrics(model=model) if row["structure"] == structure]
