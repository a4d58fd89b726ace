"""Web API and dashboard: tokens, patient data and response headers.

The real FastAPI app of :mod:`node.web.app` runs over a real catalogue
(a phantom series with a sentinel patient received through
:class:`node.receiver.Receiver`, a done job with outputs, a failed job, a
failed delivery), driven in-process with Starlette's TestClient. The routes
are read from the app, so a new endpoint is covered without a change here:
every POST (an action) is refused without the token and with wrong ones and
accepted with it; off loopback every GET except the probes is refused
without the token; no response carries the patient's name, ID or birth
date unless ``web.show_patient_names`` is on (the birth date never); every
response carries ``Cache-Control: no-store`` and the anti-sniffing, framing
and referrer headers. One row per case.

Run: ``python -m harden.run_all --only web_api [--budget short|long]``.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from harden.results import CheckResult
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.jobqueue import SqlJobQueue
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.receiver import Receiver
from node.spool import Quarantine, Spool
from node.web.app import create_app
from node.web.data import WebContext
from tests.peers import write_phantom_series

__all__ = ["run"]

TOKEN = "harden-web-token-0123456789"
PATIENT = {"PatientName": "HARDEN^PHI^SENTINEL", "PatientID": "PHI-734219",
           "PatientBirthDate": "19450317"}
#: What must not appear in a response (name parts, ID, birth date as stored and as a date).
PHI = ("SENTINEL", "PHI-734219", "19450317", "1945-03-17")
PROBES = ("/healthz", "/readyz")
HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff",
           "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
WRONG = ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN,
         f"Basic {TOKEN}", f"bearer  {TOKEN}", "")


class _Site:
    """A node's stores with one done job, one failed job and one failed delivery."""

    def __init__(self, root: Path, web: dict[str, Any]) -> None:
        self.config = NodeConfig(
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                           "port": 1}],
            storage={"spool_dir": str(root / "spool"), "quarantine_dir": str(root / "q"),
                     "output_dir": str(root / "out"), "min_free_disk_mb": 0},
            web=web)
        self.catalogue = Catalogue(f"sqlite:///{root}/c.db")
        self.queue = SqlJobQueue(self.catalogue)
        self.outbox = Outbox(self.catalogue, self.config.timing.retry)
        receiver = Receiver(Spool(self.config.storage.spool_dir),
                            Quarantine(self.config.storage.quarantine_dir), self.catalogue)
        series = write_phantom_series(root / "in", uid_seed=f"harden-web-{root.name}")
        for path in series.paths:
            ds = pydicom.dcmread(path)
            for keyword, value in PATIENT.items():
                setattr(ds, keyword, value)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            assert receiver.receive(buffer.getvalue(), lambda ds=ds: ds, "SCANNER") == 0
        self.series_uid = series.series_uid
        self.done = self.queue.enqueue(series.series_uid, rule="mr", model="a",
                                       seg_type="binary", destinations=("pacs",),
                                       study_uid=series.study_uid)
        folder = root / "out" / f"job-{self.done}" / series.series_uid
        folder.mkdir(parents=True)
        (folder / "volumes.json").write_text(json.dumps({"structures": [], "qc_flags": []}))
        (folder / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\nstand-in")
        (folder / "seg.dcm").write_bytes(b"")
        self.queue.claim()
        self.queue.complete(self.done, {"volumes": [{"key": series.series_uid,
                                                     "folder": str(folder), "status": "done"}]})
        self.failed = self.queue.enqueue("1.2.3", rule="mr", model=None, seg_type="binary",
                                         destinations=())
        self.queue.claim()
        self.queue.fail(self.failed, "no instances of the job's series are in the spool")
        self.outbox.add(self.done, "pacs", folder / "seg.dcm", "2.25.7")
        [delivery] = self.outbox.due()
        self.outbox.failed_permanent(delivery, "association rejected")
        self.delivery = delivery.id
        metrics = NodeMetrics(lambda: {"jobs": self.queue.counts(), "outbox": {},
                                       "series": {}, "disk_free_bytes": 1, "device_memory": [],
                                       "workers": []})
        ctx = WebContext(self.config, self.catalogue, self.queue, self.outbox, time.time())
        self.app: FastAPI = create_app(ctx, metrics, readiness=lambda: {"ok": True},
                                       models=lambda: [])
        self.client = TestClient(self.app)

    def urls(self, method: str) -> list[str]:
        """Every route of ``method`` with its path parameters filled for this site."""
        values = {"job_id": self.failed if method == "POST" else self.done,
                  "delivery_id": self.delivery, "volume": self.series_uid,
                  "name": "pacs" if method == "POST" else "preview.png",
                  "model": "demo", "structure": "liver"}
        return [re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), route.path)
                for route in self.app.routes
                if isinstance(route, APIRoute) and method in route.methods]

    def close(self) -> None:
        self.client.close()
        self.catalogue.close()


def _auth(value: str | None) -> dict[str, str]:
    return {"Authorization": value} if value is not None else {}


def _status_row(check: str, site: _Site, method: str, headers: list[str | None],
                want: set[int] | range, skip: tuple[str, ...] = ()) -> CheckResult:
    """Every ``method`` URL with each of ``headers`` must answer a status in ``want``."""
    findings, tried = [], 0
    urls = [u for u in site.urls(method) if u not in skip]
    for url in urls:
        for header in headers:
            tried += 1
            status = site.client.request(method, url, headers=_auth(header)).status_code
            if status not in want:
                findings.append(f"{method} {url} with {header!r}: {status}")
    figure = f"{len(urls)} {method} routes x {len(headers)} credentials"
    return CheckResult(check, tried, len(findings), figure, findings)


def _responses(site: _Site) -> list[tuple[str, Any]]:
    """Every GET response of ``site`` (with the token), and the error answers."""
    got = [(url, site.client.get(url, headers=_auth(f"Bearer {TOKEN}")))
           for url in site.urls("GET")]
    got.append(("/jobs/999999", site.client.get("/jobs/999999",
                                                headers=_auth(f"Bearer {TOKEN}"))))
    got.append(("/api/overview (no token)", site.client.get("/api/overview")))
    return got


def _phi_row(check: str, responses: list[tuple[str, Any]], allowed: tuple[str, ...] = ()
             ) -> CheckResult:
    findings = [f"{url}: {value!r}" for url, r in responses for value in PHI
                if value not in allowed and value in r.text]
    return CheckResult(check, len(responses), len(findings),
                       f"{len(responses)} responses searched for name, ID, birth date",
                       findings)


def _headers_row(responses: list[tuple[str, Any]]) -> CheckResult:
    findings = []
    for url, r in responses:
        missing = [f"{k}: {v}" for k, v in HEADERS.items() if r.headers.get(k) != v]
        if "frame-ancestors 'none'" not in r.headers.get("content-security-policy", ""):
            missing.append("content-security-policy: frame-ancestors 'none'")
        if missing:
            findings.append(f"{url}: missing {', '.join(missing)}")
    return CheckResult("web: no-store, nosniff, framing, referrer headers", len(responses),
                       len(findings), "Cache-Control no-store on every page and document",
                       findings)


def run(budget: str = "short") -> list[CheckResult]:
    """The web checks; ``long`` tries every credential, ``short`` a few."""
    wrong: list[str | None] = list(WRONG if budget == "long" else WRONG[:3])
    good = [f"Bearer {TOKEN}"]
    with tempfile.TemporaryDirectory(prefix="segnode-web-") as tmp:
        root = Path(tmp)
        sites = {"loopback": _Site(root / "loopback", {"token": TOKEN}),
                 "open": _Site(root / "open", {"host": "0.0.0.0", "token": TOKEN}),
                 "names": _Site(root / "names", {"token": TOKEN, "show_patient_names": True})}
        try:
            loop, open_, names = sites["loopback"], sites["open"], sites["names"]
            rows = [
                _status_row("web: actions refused without a token", loop, "POST", [None],
                            {401, 403}),
                _status_row("web: actions refused with a wrong token", loop, "POST", wrong,
                            {401, 403}),
                _status_row("web: actions accepted with the token", loop, "POST", good,
                            range(200, 300)),
                _status_row("web: off loopback, reads refused without a token", open_, "GET",
                            [None, *wrong], {401, 403}, skip=PROBES),
                _status_row("web: off loopback, reads accepted with the token", open_, "GET",
                            good, range(200, 300)),
                _status_row("web: on loopback, reads open", loop, "GET", [None],
                            range(200, 300)),
            ]
            every = _responses(loop) + _responses(open_)
            rows.append(_phi_row("web: no patient data in any response", every))
            shown = _responses(names)
            rows.append(_phi_row("web: show_patient_names shows name and ID only", shown,
                                 allowed=("SENTINEL", "PHI-734219")))
            if not any("SENTINEL" in r.text for _, r in shown):
                rows[-1].failures += 1
                rows[-1].findings.append("the patient name is not shown when configured")
            rows.append(_headers_row(every + shown))
        finally:
            for site in sites.values():
                site.close()
    return rows
