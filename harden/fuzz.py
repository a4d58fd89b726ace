"""Mutation fuzz campaigns over the targets of :mod:`harden.fuzz_targets`, each input sandboxed.

Every target runs in its own child process (``spawn``) with its address
space capped (``RLIMIT_AS``: what it had after start-up plus ``memory_mb``);
the parent hands it input numbers and waits at most ``timeout_s`` for each
answer. Input ``n`` is made from ``random.Random(f"{seed}:{target}:{n}")``,
so a campaign is repeatable; before running an input the child writes it to
``<out>/<target>/current``, and the parent copies that folder to
``<out>/<target>/finding-<n>`` when the input breaks a promise, raises an
unexpected exception, runs out of memory, hangs or kills the child. A hung
or dead child is replaced and the campaign goes on.

Usage::

    .venv/bin/python -m harden.fuzz [--target receive|series|stations|config|all]
        [--inputs N | --seconds S] [--seed S] [--out .harden/fuzz]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import random
import resource
import shutil
import time
import traceback
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from harden.fuzz_targets import TARGETS, Finding
from harden.results import CheckResult, format_table
from harden.seeds import Seeds, build_seeds

__all__ = ["Campaign", "run", "run_campaign"]

_SHORT_INPUTS = {"receive": 70, "series": 70, "stations": 20, "config": 70, "seg": 25}
_LONG_SECONDS = 600.0


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(target_name: str, seeds: Seeds, workdir: Path, seed: str, memory_mb: int,
           conn: Connection) -> None:
    # The findings are the output: the code's own log lines and warnings would only drown them.
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    target = TARGETS[target_name](seeds, workdir / "work")
    limit = _vm_size_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    current = workdir / "current"
    conn.send(("ready", "", 0.0, 0))
    while True:
        n = conn.recv()
        if n is None:
            return
        started = time.perf_counter()
        try:
            item = target.make(random.Random(f"{seed}:{target_name}:{n}"))
            shutil.rmtree(current, ignore_errors=True)
            item.save(current)
            (current / "mutations.txt").write_text("\n".join(item.mutations) + "\n")
            kind, detail = "ok", target.run(item)
        except Finding as exc:
            kind, detail = "finding", f"broken promise: {exc}"
        except MemoryError:
            kind, detail = "memory", f"out of memory (over {memory_mb} MiB)"
        except BaseException as exc:  # noqa: BLE001 - every escape is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            kind = "finding"
            detail = (f"{type(exc).__name__}: {str(exc)[:200]} "
                      f"at {Path(frame.filename).name}:{frame.lineno}")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        conn.send((kind, detail, time.perf_counter() - started, peak_mib))


@dataclass
class Campaign:
    """What one target's campaign tried and found."""

    target: str
    tried: int = 0
    accepted: int = 0
    rejected: int = 0
    findings: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    peak_mib: int = 0
    restarts: int = 0

    def result(self, real_files: int) -> CheckResult:
        """The campaign as a row of the hardening table."""
        times = sorted(self.seconds) or [0.0]
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        figure = (f"accepted {self.accepted}, rejected {self.rejected}; per input p99 "
                  f"{p99 * 1e3:.0f} ms, max {times[-1]:.2f} s; peak RSS {self.peak_mib} MiB; "
                  f"seeds: phantoms + {real_files} real files")
        return CheckResult(f"fuzz: {self.target}", self.tried, len(self.findings), figure,
                           list(self.findings))


class _Sandbox:
    """One child process running one target."""

    def __init__(self, target: str, seeds: Seeds, workdir: Path, seed: str,
                 memory_mb: int) -> None:
        self.args = (target, seeds, workdir, seed, memory_mb)
        self.process: multiprocessing.Process | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_child, args=(*self.args, child), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        if not parent.poll(120) or parent.recv()[0] != "ready":
            raise RuntimeError(f"the fuzz child for {self.args[0]} did not start")

    def ask(self, n: int, timeout_s: float) -> tuple[str, str, float, int]:
        """Run input ``n``; a hang or a dead child comes back as its own kind."""
        assert self.conn is not None and self.process is not None
        started = time.perf_counter()
        self.conn.send(n)
        try:
            if self.conn.poll(timeout_s):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        seconds = time.perf_counter() - started
        alive = self.process.is_alive()
        self.stop()
        if alive:
            return "hang", f"no answer within {timeout_s:g} s", seconds, 0
        return "crash", f"the process died (exit code {self.process.exitcode})", seconds, 0

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(10)
        self.conn = None


def run_campaign(target: str, seeds: Seeds, out: Path, *, inputs: int | None = None,
                 seconds: float | None = None, seed: str = "segnode", timeout_s: float = 20.0,
                 memory_mb: int = 2048) -> Campaign:
    """Fuzz one target for ``inputs`` inputs or ``seconds`` seconds."""
    workdir = out / target
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    campaign = Campaign(target)
    sandbox = _Sandbox(target, seeds, workdir, seed, memory_mb)
    sandbox.start()
    deadline = time.monotonic() + seconds if seconds else None
    n = 0
    try:
        while (inputs is None or n < inputs) and (deadline is None or time.monotonic() < deadline):
            if sandbox.conn is None:
                sandbox.start()
                campaign.restarts += 1
            kind, detail, took, peak = sandbox.ask(n, timeout_s)
            campaign.tried += 1
            campaign.seconds.append(took)
            campaign.peak_mib = max(campaign.peak_mib, peak)
            if kind == "ok":
                if detail.startswith("accepted"):
                    campaign.accepted += 1
                else:
                    campaign.rejected += 1
            else:
                finding = workdir / f"finding-{n}"
                if (workdir / "current").is_dir():
                    shutil.copytree(workdir / "current", finding, dirs_exist_ok=True)
                (finding / "reason.txt").parent.mkdir(parents=True, exist_ok=True)
                (finding / "reason.txt").write_text(f"{kind}: {detail}\n")
                campaign.findings.append(f"input {n} ({finding}): {kind}: {detail}")
            n += 1
    finally:
        if sandbox.conn is not None:
            sandbox.conn.send(None)
        sandbox.stop()
    return campaign


def run(budget: str = "short", *, out: Path | None = None,
        targets: tuple[str, ...] = tuple(TARGETS)) -> list[CheckResult]:
    """Every target's campaign: fixed input counts (short) or ten minutes each (long)."""
    out = out or Path(".harden/fuzz")
    seeds = build_seeds()
    rows = []
    for target in targets:
        if budget == "short":
            campaign = run_campaign(target, seeds, out, inputs=_SHORT_INPUTS[target])
        else:
            campaign = run_campaign(target, seeds, out, seconds=_LONG_SECONDS)
        rows.append(campaign.result(seeds.real_files))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--inputs", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--seed", default="segnode")
    parser.add_argument("--out", type=Path, default=Path(".harden/fuzz"))
    args = parser.parse_args()
    seeds = build_seeds()
    targets = list(TARGETS) if args.target == "all" else [args.target]
    rows = []
    for target in targets:
        inputs = args.inputs if args.inputs or args.seconds else _SHORT_INPUTS[target]
        campaign = run_campaign(target, seeds, args.out, inputs=inputs, seconds=args.seconds,
                                seed=args.seed)
        rows.append(campaign.result(seeds.real_files))
        print(format_table(rows[-1:]), flush=True)
        for line in campaign.findings:
            print("  " + line)
    print()
    print(format_table(rows))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
