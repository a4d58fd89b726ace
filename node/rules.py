"""Which completed series to process, and how: the ``rules`` of ``config.yaml``.

Series that are never processed, whatever the rules say: segnode's own
outputs, segmentations, structured reports, presentation states, key object
selections and other non-image objects, localizers, and derived secondary
captures. Otherwise the first rule whose conditions all hold decides; a
series that matches none is kept and not processed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicom_io._equipment import MANUFACTURER
from node.catalogue import SeriesRow
from node.config import RuleConfig, RuleMatch

__all__ = ["Decision", "decide", "never_processed"]

#: SOP Class UID prefixes of objects that are not images to segment.
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.66": "a segmentation or registration object",
    "1.2.840.10008.5.1.4.1.1.88": "a structured report or key object selection",
    "1.2.840.10008.5.1.4.1.1.11": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.481": "an RT object",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9": "a waveform",
    "1.2.840.10008.5.1.4.1.1.67": "a real-world value map",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Decision:
    """The outcome for one series: the rule to apply, or why none applies."""

    rule: RuleConfig | None
    reason: str

    @property
    def process(self) -> bool:
        """True when a job is to be queued."""
        return self.rule is not None


def never_processed(series: SeriesRow) -> str | None:
    """Why ``series`` is never processed, or None when rules may decide."""
    # segnode's own phantom series are ORIGINAL images; everything else it makes is derived.
    if series.manufacturer.strip() == MANUFACTURER and "ORIGINAL" not in series.image_type:
        return "segnode's own output"
    for prefix, what in _NON_IMAGE_PREFIXES.items():
        if series.sop_class_uid == prefix or series.sop_class_uid.startswith(prefix + "."):
            return f"SOP class {series.sop_class_uid} is {what}"
    if "LOCALIZER" in series.image_type:
        return "a localizer (ImageType LOCALIZER)"
    secondary = series.sop_class_uid == _SECONDARY_CAPTURE or series.sop_class_uid.startswith(
        _SECONDARY_CAPTURE + ".")
    if secondary and "DERIVED" in series.image_type:
        return "a derived secondary capture"
    return None


def _mismatch(match: RuleMatch, series: SeriesRow) -> str | None:
    """The first condition of ``match`` that ``series`` fails, or None."""
    if match.modality and series.modality.upper() not in {m.upper() for m in match.modality}:
        return f"modality {series.modality or '(none)'} not in {', '.join(match.modality)}"
    if match.series_description is not None and not re.search(match.series_description,
                                                               series.description):
        return f"series description does not match /{match.series_description}/"
    wanted_parts = {b.upper() for b in match.body_part_examined}
    if wanted_parts and series.body_part.upper() not in wanted_parts:
        return f"body part {series.body_part or '(none)'} not in {', '.join(sorted(wanted_parts))}"
    missing = [t for t in match.image_type if t.upper() not in series.image_type]
    if missing:
        return f"image type lacks {', '.join(missing)}"
    if series.n_instances < match.min_slices:
        return f"{series.n_instances} instances, fewer than {match.min_slices}"
    return None


def decide(series: SeriesRow, rules: tuple[RuleConfig, ...]) -> Decision:
    """Apply the exclusions, then the first matching rule."""
    excluded = never_processed(series)
    if excluded is not None:
        return Decision(None, f"never processed: {excluded}")
    reasons = []
    for rule in rules:
        mismatch = _mismatch(rule.match, series)
        if mismatch is None:
            return Decision(rule, f"rule {rule.name}")
        reasons.append(f"{rule.name}: {mismatch}")
    if not rules:
        return Decision(None, "no rules configured")
    return Decision(None, "no rule matched (" + "; ".join(reasons) + ")")
