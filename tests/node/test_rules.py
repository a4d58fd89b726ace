"""Which completed series are processed: the exclusions, then the first matching rule."""

from __future__ import annotations

import dataclasses

import pytest

from node.catalogue import SeriesRow
from node.config import RuleConfig, RuleMatch
from node.rules import decide, never_processed

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

ANY = (RuleConfig(name="any"),)


def series(**changes: object) -> SeriesRow:
    """An axial MR series of 40 instances; ``changes`` replace its attributes."""
    row = SeriesRow(
        series_uid="1.2.3.4", study_uid="1.2.3", modality="MR", description="t1_vibe_dixon_opp",
        body_part="ABDOMEN", image_type=("ORIGINAL", "PRIMARY", "M", "DIXON"), sop_class_uid=MR,
        manufacturer="SIEMENS", n_instances=40, last_received_at=0.0, state="receiving",
    )
    return dataclasses.replace(row, **changes)


def rule(name: str, **match: object) -> RuleConfig:
    """A rule with the given match conditions."""
    return RuleConfig(name=name, match=RuleMatch(**match))


# Never processed --------------------------------------------------------------------------

EXCLUDED = {
    "SEG": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", modality="SEG"), "segmentation"),
    "basic text SR": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11", modality="SR"),
                      "structured report"),
    "enhanced SR": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22", modality="SR"),
                    "structured report"),
    "comprehensive SR": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", modality="SR"),
                         "structured report"),
    "key object selection": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.59",
                                  modality="KO"), "key object selection"),
    "presentation state": (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.11.1", modality="PR"),
                           "presentation state"),
    "localizer": (dict(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), "localizer"),
    "derived secondary capture": (dict(sop_class_uid=SECONDARY_CAPTURE, modality="OT",
                                       image_type=("DERIVED", "SECONDARY")),
                                  "derived secondary capture"),
    "segnode's own derived output": (dict(manufacturer="segnode",
                                          image_type=("DERIVED", "PRIMARY")),
                                     "segnode's own output"),
    "segnode output without image type": (dict(manufacturer="segnode ", image_type=()),
                                          "segnode's own output"),
}


@pytest.mark.parametrize("changes, why", EXCLUDED.values(), ids=EXCLUDED.keys())
def test_never_processed_whatever_the_rules(changes: dict[str, object], why: str) -> None:
    row = series(**changes)
    reason = never_processed(row)
    assert reason is not None and why in reason
    decision = decide(row, ANY)
    assert not decision.process and decision.rule is None
    assert decision.reason == f"never processed: {reason}"


@pytest.mark.parametrize("changes", [
    {},
    {"manufacturer": "segnode", "image_type": ("ORIGINAL", "PRIMARY")},  # a segnode phantom
    {"sop_class_uid": ENHANCED_MR},
    {"sop_class_uid": CT, "modality": "CT", "image_type": ("ORIGINAL", "PRIMARY", "AXIAL")},
    {"sop_class_uid": SECONDARY_CAPTURE, "image_type": ("ORIGINAL", "PRIMARY")},
    {"image_type": ("DERIVED", "SECONDARY", "MPR")},  # a derived MR reformat is an image
], ids=["mr", "segnode phantom", "enhanced mr", "ct", "original secondary capture", "mr mpr"])
def test_image_series_are_left_to_the_rules(changes: dict[str, object]) -> None:
    row = series(**changes)
    assert never_processed(row) is None
    decision = decide(row, ANY)
    assert decision.process and decision.rule == ANY[0] and decision.reason == "rule any"


# Matching ------------------------------------------------------------------------------------


def test_modality_is_case_insensitive() -> None:
    assert decide(series(modality="mr"), (rule("r", modality=("MR",)),)).process
    assert decide(series(modality="MR"), (rule("r", modality=("ct", "mr")),)).process
    miss = decide(series(modality="CT"), (rule("r", modality=("MR", "PT")),))
    assert not miss.process and miss.reason == "no rule matched (r: modality CT not in MR, PT)"


def test_series_description_is_searched_as_a_regex() -> None:
    vibe = (rule("vibe", series_description=r"vibe.*(opp|in)\b"),)
    assert decide(series(description="t1_vibe_dixon_opp"), vibe).process
    assert not decide(series(description="t2_haste"), vibe).process
    anchored = (rule("start", series_description="^vibe"),)
    assert not decide(series(description="t1_vibe"), anchored).process
    reason = decide(series(description="t2_haste"), vibe).reason
    assert reason == r"no rule matched (vibe: series description does not match /vibe.*(opp|in)\b/)"


def test_body_part_examined() -> None:
    abdomen = (rule("abd", body_part_examined=("abdomen", "WHOLEBODY")),)
    assert decide(series(body_part="ABDOMEN"), abdomen).process
    assert decide(series(body_part="wholebody"), abdomen).process
    assert decide(series(body_part="HEAD"), abdomen).reason == \
        "no rule matched (abd: body part HEAD not in ABDOMEN, WHOLEBODY)"
    assert "body part (none)" in decide(series(body_part=""), abdomen).reason


def test_image_type_needs_every_listed_value() -> None:
    original = (rule("orig", image_type=("ORIGINAL", "primary")),)
    assert decide(series(image_type=("ORIGINAL", "PRIMARY", "M")), original).process
    miss = decide(series(image_type=("ORIGINAL", "SECONDARY")), original)
    assert not miss.process and miss.reason == "no rule matched (orig: image type lacks primary)"


def test_min_slices() -> None:
    twenty = (rule("twenty", min_slices=20),)
    assert decide(series(n_instances=20), twenty).process
    miss = decide(series(n_instances=19), twenty)
    assert not miss.process and "19 instances, fewer than 20" in miss.reason


def test_all_conditions_of_a_rule_must_hold() -> None:
    strict = rule("strict", modality=("MR",), body_part_examined=("ABDOMEN",), min_slices=50)
    decision = decide(series(), (strict,))
    assert not decision.process and "40 instances, fewer than 50" in decision.reason


def test_first_matching_rule_wins() -> None:
    rules = (rule("ct-only", modality=("CT",)), rule("mr-a", modality=("MR",)),
             rule("mr-b", modality=("MR",)))
    decision = decide(series(), rules)
    assert decision.rule is rules[1] and decision.reason == "rule mr-a"


def test_non_match_names_the_failing_condition_of_each_rule() -> None:
    rules = (rule("ct", modality=("CT",)), rule("big", min_slices=100),
             rule("head", body_part_examined=("HEAD",)))
    decision = decide(series(), rules)
    assert not decision.process
    assert decision.reason == ("no rule matched (ct: modality MR not in CT; "
                               "big: 40 instances, fewer than 100; "
                               "head: body part ABDOMEN not in HEAD)")


def test_no_rules_processes_nothing() -> None:
    decision = decide(series(), ())
    assert not decision.process and decision.reason == "no rules configured"
