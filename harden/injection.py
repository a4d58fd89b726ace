"""Injection through DICOM: hostile UIDs and descriptions sent to the real listener.

A pynetdicom SCU sends, over one association, instances whose UIDs hold
``../``, backslashes, HTML, control characters or 65+ characters, and
instances with valid UIDs whose SeriesDescription holds ANSI escapes, fake
log lines (CR LF), NUL, 64 KB of text or HTML/JavaScript. Pass when: every
bad UID is answered Cannot Understand and quarantined; no file appears
outside the spool, the quarantine and the database (the whole temporary
tree, three levels above the spool, is compared before and after); the
hostile descriptions are stored and the association still answers C-ECHO;
the studies, failures and job pages render the text escaped in headless
Chromium (no dialog, no script flag, no injected element); no log record,
formatted as text or JSON, holds a raw control character or the patient's
name or ID. One row per case.

Run: ``python -m harden.run_all --only injection [--budget short|long]``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from harden.results import CheckResult
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.jobqueue import SqlJobQueue
from node.listener import Listener
from node.logs import JsonFormatter, TextFormatter
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.receiver import Receiver
from node.spool import Quarantine, Spool
from node.web.app import create_app
from node.web.data import WebContext
from node.web.server import WebServer
from tests.peers import free_local_port, write_phantom_series

__all__ = ["run"]

CHROMIUM = "/usr/bin/chromium"
PATIENT = {"PatientName": "INJECT^PHI^SENTINEL", "PatientID": "INJ-PHI-5521"}
#: (which UID, value): each must be refused (Cannot Understand).
BAD_UIDS = [
    ("SOPInstanceUID", "1.2.3/../../../../../escape"),
    ("SOPInstanceUID", "../../../../../../1.2.3"),
    ("StudyInstanceUID", "1.2.3\\..\\..\\escape"),
    ("SOPInstanceUID", "1.2.3<script>window.__pwned=5</script>"),
    ("SOPInstanceUID", '"><img src=x onerror=window.__pwned=4>'),
    ("SOPInstanceUID", "1.2.3\x1b[31m.4"),
    ("SOPInstanceUID", "1.2.3\r\n2026-01-01 INFO x: fake"),
    ("SOPInstanceUID", "1.2.3 4"),
    ("SOPInstanceUID", "1.2.-3"),
    ("SeriesInstanceUID", "1." + "2" * 70),
    ("StudyInstanceUID", "1.2.3/../../../escape"),
    ("StudyInstanceUID", "1." + "3" * 200),
]
#: SeriesDescription values that must be stored, shown escaped and logged escaped.
DESCRIPTIONS = [
    "\x1b[31mRED\x1b[0m\x1b]0;title\x07",
    "ok\r\n2026-01-01 00:00:00,000 INFO node.listener: fake line",
    "nul\x00inside\x00",
    "<script>window.__pwned=1;alert(1)</script>",
    '"><img src=x onerror="window.__pwned=2;alert(2)">',
    "</i></td><script>window.__pwned=3</script>",
    "A" * 65536,
]
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class _Capture(logging.Handler):
    """Keeps every record (formatting happens in the check)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _captured_logs() -> Iterator[_Capture]:
    root = logging.getLogger()
    handler, level = _Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class _Node:
    """The real listener and its stores under ``root``."""

    def __init__(self, root: Path) -> None:
        self.config = NodeConfig(
            node={"ae_title": "SEGNODE", "port": free_local_port()},
            callers=[{"ae_title": "SCANNER", "addresses": ["127.0.0.1"]}],
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                           "port": 1}],
            storage={"spool_dir": root / "spool", "quarantine_dir": root / "quarantine",
                     "output_dir": root / "out", "min_free_disk_mb": 0},
            database={"url": f"sqlite:///{root}/c.db"})
        self.root = root
        self.catalogue = Catalogue(self.config.database_url)
        self.queue = SqlJobQueue(self.catalogue)
        self.outbox = Outbox(self.catalogue, self.config.timing.retry)
        receiver = Receiver(Spool(self.config.storage.spool_dir),
                            Quarantine(self.config.storage.quarantine_dir), self.catalogue)
        self.listener = Listener(self.config, receiver)
        self.listener.start()

    def allowed(self, path: Path) -> bool:
        """True for files the node may write: spool, quarantine, database."""
        storage = self.config.storage
        return (path.is_relative_to(storage.spool_dir)
                or path.is_relative_to(storage.quarantine_dir)
                or (path.parent == self.root and path.name.startswith("c.db")))

    def close(self) -> None:
        self.listener.stop()
        self.catalogue.close()


def _files(top: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(top) for name in names}


def _send(port: int, datasets: list[pydicom.Dataset]) -> tuple[list[int], bool]:
    """C-STORE each data set over one association; (statuses, C-ECHO answered afterwards)."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    if not assoc.is_established:
        return [], False
    try:
        statuses = []
        for ds in datasets:
            answer = assoc.send_c_store(ds)
            statuses.append(int(answer.Status) if answer and "Status" in answer else -1)
        echoed = assoc.send_c_echo()
        return statuses, bool(echoed and echoed.Status == 0)
    finally:
        if assoc.is_established:
            assoc.release()


def _hostile(base: pydicom.Dataset, budget: str) -> tuple[list[pydicom.Dataset], str,
                                                          list[pydicom.Dataset]]:
    """(bad-UID data sets, study UID of the described ones, data sets with descriptions)."""
    repeats = 1 if budget == "short" else 10
    bad = []
    for _ in range(repeats):
        for keyword, value in BAD_UIDS:
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            setattr(ds, keyword, value)
            bad.append(ds)
    study = generate_uid()
    described = []
    for text in DESCRIPTIONS:
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesDescription = text
        described.append(ds)
    return bad, study, described


def _log_row(records: list[logging.LogRecord]) -> CheckResult:
    """Every record as text and as JSON: no raw control character, no patient data."""
    synthetic = [logging.LogRecord("harden", logging.WARNING, __file__, 1, "value %s", (text,),
                                   None) for text in DESCRIPTIONS + [v for _, v in BAD_UIDS]]
    findings = []
    for record in records + synthetic:
        for formatter in (TextFormatter(), JsonFormatter()):
            line = formatter.format(record)
            head, *rest = line.split("\n")
            raw = _RAW_CONTROL.search(line)
            if raw or any(not part.startswith("    ") for part in rest):
                findings.append(f"{type(formatter).__name__}: {line[:80]!r}")
            if any(value in line for value in PATIENT.values()):
                findings.append(f"patient data logged: {head[:80]!r}")
    return CheckResult("logs: no raw control characters, no patient data",
                       2 * (len(records) + len(synthetic)), len(findings),
                       f"{len(records)} records of the run, {len(synthetic)} synthetic",
                       findings)


def _browse(base: str, paths: list[str]) -> dict[str, Any]:
    """Open ``paths`` in headless Chromium; what ran and what was shown."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"dialogs": [], "flags": [], "injected": 0, "texts": ""}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.set_default_timeout(20000)
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        for path in paths:
            page.goto(base + path)
            page.wait_for_load_state("load")
            seen["flags"].append(page.evaluate("() => window.__pwned === undefined ? null "
                                               ": String(window.__pwned)"))
            seen["injected"] += page.evaluate(
                "() => document.querySelectorAll('img[src=\"x\"], main script').length")
            seen["texts"] += page.inner_text("main")
        browser.close()
    return seen


def _browser_row(node: _Node, study: str, series_uid: str) -> CheckResult:
    check = "dashboard: hostile text shown escaped (Chromium)"
    if not Path(CHROMIUM).exists():
        return CheckResult(check, 0, 0, "not run: chromium is not installed")
    try:
        import playwright  # noqa: F401
    except ImportError:
        return CheckResult(check, 0, 0, "not run: playwright is not installed")
    job = node.queue.enqueue(series_uid, rule="inject", model=None, seg_type="binary",
                             destinations=(), study_uid=study)
    metrics = NodeMetrics(lambda: {"jobs": {}, "outbox": {}, "series": {},
                                   "disk_free_bytes": 1, "device_memory": [], "workers": []})
    ctx = WebContext(node.config, node.catalogue, node.queue, node.outbox, time.time())
    server = WebServer(create_app(ctx, metrics, readiness=lambda: {}, models=lambda: []),
                       "127.0.0.1", free_local_port())
    server.start()
    paths = ["/studies", "/failures", f"/jobs/{job}"]
    try:
        seen = _browse(server.address, paths)
    finally:
        server.stop()
    findings = [f"dialog: {m}" for m in seen["dialogs"]]
    findings += [f"{p}: window.__pwned = {f}" for p, f in zip(paths, seen["flags"], strict=True)
                 if f is not None]
    if seen["injected"]:
        findings.append(f"{seen['injected']} injected elements in the pages")
    for text in ("<script>window.__pwned=1;alert(1)</script>", "onerror="):
        if text not in seen["texts"]:
            findings.append(f"{text!r} not shown as text")
    return CheckResult(check, len(paths), len(findings),
                       f"{', '.join(paths)}: no dialog, no script ran", findings)


def run(budget: str = "short") -> list[CheckResult]:
    """The injection checks; ``long`` sends every bad UID ten times."""
    with tempfile.TemporaryDirectory(prefix="segnode-inject-") as tmp:
        outer = Path(tmp)
        base_series = write_phantom_series(outer / "in", uid_seed="harden-injection")
        base = pydicom.dcmread(base_series.paths[0])
        for keyword, value in PATIENT.items():
            setattr(base, keyword, value)
        shutil.rmtree(outer / "in")
        node = _Node(outer / "a" / "b" / "node")
        try:
            before = _files(outer)
            with _captured_logs() as logs, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom on the invalid values, meant here
                bad, study, described = _hostile(base, budget)
                bad_status, bad_echo = _send(node.config.node.port, bad)
                ok_status, ok_echo = _send(node.config.node.port, described)
            quarantined = node.catalogue.list_quarantine(limit=10000)
            rows = [_uid_row(bad, bad_status, bad_echo, len(quarantined)),
                    _files_row(node, _files(outer) - before),
                    _description_row(node, described, ok_status, ok_echo),
                    _log_row(logs.records),
                    _browser_row(node, study, str(described[3].SeriesInstanceUID))]
        finally:
            node.close()
    return rows


def _uid_row(bad: list[pydicom.Dataset], statuses: list[int], echoed: bool,
             quarantined: int) -> CheckResult:
    findings = [f"{_uid_label(ds)}: status 0x{s:04X}" for ds, s in zip(bad, statuses,
                                                                         strict=False)
                if s != 0xC210]
    if len(statuses) != len(bad) or not echoed:
        findings.append(f"association broke: {len(statuses)} of {len(bad)} answered")
    if quarantined != len(bad):
        findings.append(f"{quarantined} quarantined, {len(bad)} sent")
    return CheckResult("inject: bad UIDs answered Cannot Understand, quarantined", len(bad),
                       len(findings), f"{quarantined} of {len(bad)} quarantined (0xC210)",
                       findings)


def _uid_label(ds: pydicom.Dataset) -> str:
    bad = [k for k, _ in BAD_UIDS if not re.fullmatch(r"[0-9.]{1,64}", str(ds.get(k, "")))]
    return ", ".join(f"{k}={str(ds.get(k))[:40]!r}" for k in dict.fromkeys(bad))


def _files_row(node: _Node, new: set[Path]) -> CheckResult:
    outside = sorted(str(p) for p in new if not node.allowed(p))
    names = [p for p in new if p.is_relative_to(node.config.storage.spool_dir)
             and not re.fullmatch(r"[0-9.]+(\.dcm)?", p.name)]
    findings = [f"written outside: {p}" for p in outside]
    findings += [f"spool file not named from a UID: {p}" for p in names]
    return CheckResult("inject: no file outside spool, quarantine, database", len(new),
                       len(findings), f"{len(new)} new files, {len(outside)} outside",
                       findings)


def _description_row(node: _Node, described: list[pydicom.Dataset], statuses: list[int],
                     echoed: bool) -> CheckResult:
    findings = [f"description {str(ds.SeriesDescription)[:30]!r}: status 0x{s:04X}"
                for ds, s in zip(described, statuses, strict=False) if s != 0]
    if len(statuses) != len(described) or not echoed:
        findings.append(f"association broke: {len(statuses)} of {len(described)} answered")
    stored = [node.catalogue.get_series(str(ds.SeriesInstanceUID)) for ds in described]
    longest = max((len(s["description"]) for s in stored if s), default=0)
    findings += [f"series {ds.SeriesInstanceUID} not catalogued"
                 for ds, s in zip(described, stored, strict=True) if s is None]
    return CheckResult("inject: hostile descriptions stored, association alive",
                       len(described), len(findings),
                       f"stored {sum(s is not None for s in stored)}, longest {longest} chars, "
                       "C-ECHO after", findings)
