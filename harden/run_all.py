"""``make harden``: every hardening check with its long budget, as one table.

Prints check, inputs or events tried, failures and the figure, then each
failure's finding; writes the rows to ``.harden/summary.json``. Exits 1
when any check failed. ``--budget short`` runs what ``make test`` runs.

Usage: ``.venv/bin/python -m harden.run_all [--budget short|long] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from harden.results import CheckResult, format_table, write_json

#: The suite's modules in the order of the table.
MODULES = ("fuzz", "hostile_peers", "tls_matrix", "web_api", "injection", "load", "faults")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=["short", "long"], default="long")
    parser.add_argument("--only", nargs="*", choices=MODULES, default=list(MODULES))
    parser.add_argument("--json", type=Path, default=Path(".harden/summary.json"))
    args = parser.parse_args()
    rows: list[CheckResult] = []
    for name in args.only:
        started = time.monotonic()
        module = importlib.import_module(f"harden.{name}")
        reason = getattr(module, "unavailable", lambda: None)()
        if reason:
            rows.append(CheckResult(f"{name}: not run", 0, 0, reason))
        else:
            rows.extend(module.run(args.budget))
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        write_json(rows, args.json)
    print(format_table(rows))
    for row in rows:
        for finding in row.findings:
            print(f"\n{row.check}: {finding}")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
