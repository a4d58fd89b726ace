"""The short fuzz campaign of ``make test``: every target, fixed inputs, no finding.

``make fuzz`` runs the same targets for ten minutes each (and atheris's
coverage-guided engine); this is the bounded campaign the issue asks to
run on every test run. Findings are written to ``<tmp>/<target>/finding-N``
with the input's files, its mutations and the reason.
"""

from __future__ import annotations

from pathlib import Path

from harden.fuzz import run, run_campaign
from harden.fuzz_targets import TARGETS
from harden.seeds import build_seeds


def test_short_campaign_finds_nothing_and_exercises_both_outcomes(tmp_path: Path) -> None:
    rows = run("short", out=tmp_path)
    assert [r.check for r in rows] == [f"fuzz: {t}" for t in TARGETS]
    for row in rows:
        assert row.failures == 0, "\n".join(row.findings)
        assert row.tried >= 20
        # Both promises were tested: some inputs were taken, some refused with a reason.
        assert "accepted 0," not in row.figure, row.figure
        if row.check != "fuzz: stations":
            assert "rejected 0;" not in row.figure, row.figure


def test_a_hanging_input_is_a_finding_and_the_campaign_goes_on(tmp_path: Path) -> None:
    seeds = build_seeds(with_real_data=False)
    seeds.configs = ["node: {port: 11112}\n"]
    # A per-input limit far below what loading a configuration takes: every input "hangs".
    campaign = run_campaign("config", seeds, tmp_path, inputs=2, timeout_s=0.001)
    assert campaign.tried == 2
    assert len(campaign.findings) == 2 and all("hang" in f for f in campaign.findings)
    assert campaign.restarts == 1
    assert (tmp_path / "config" / "finding-0" / "reason.txt").read_text().startswith("hang")
