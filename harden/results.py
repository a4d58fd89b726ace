"""One row of the hardening table, and the table itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CheckResult", "format_table", "write_json"]


@dataclass
class CheckResult:
    """What one check tried and what went wrong.

    Attributes
    ----------
    check : str
        What was checked, e.g. ``"fuzz: series reader"``.
    tried : int
        Inputs or events tried.
    failures : int
        How many of them broke the pass condition (0 to pass).
    figure : str
        The check's figure, e.g. ``"lost: 0, duplicated: 0"`` or
        ``"p50 4.1 ms, p99 12.0 ms"``.
    findings : list of str
        One line per failure (what input or event, what happened).
    """

    check: str
    tried: int
    failures: int
    figure: str
    findings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when nothing broke the pass condition."""
        return self.failures == 0


def format_table(rows: Sequence[CheckResult]) -> str:
    """The rows as a fixed-width table: check, tried, failures, figure."""
    width = max([len("check")] + [len(r.check) for r in rows])
    lines = [f"{'check':<{width}}  {'tried':>8}  {'failures':>8}  figure",
             f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 30}"]
    for r in rows:
        lines.append(f"{r.check:<{width}}  {r.tried:>8}  {r.failures:>8}  {r.figure}")
    return "\n".join(lines)


def write_json(rows: Sequence[CheckResult], path: Path) -> None:
    """Write the rows (with their findings) to ``path`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
