"""The web API and pages over a real catalogue: reading, tokens, actions, export, metrics."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from node.catalogue import Catalogue
from node.config import NodeConfig
from node.device_memory import device_memory
from node.jobqueue import SqlJobQueue
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.web.app import create_app
from node.web.data import WebContext
from tests.peers import write_phantom_series

TOKEN = "s3cret-token-0123456789"


class Site:
    """A catalogue with one done job (outputs on disk), one failed job, one failed delivery."""

    def __init__(self, root: Path, web: dict) -> None:
        self.config = NodeConfig(
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                           "port": 1}],
            storage={"spool_dir": str(root / "spool"), "output_dir": str(root / "out"),
                     "min_free_disk_mb": 0},
            web=web)
        (root / "spool").mkdir(parents=True)
        self.catalogue = Catalogue(f"sqlite:///{root}/c.db")
        self.queue = SqlJobQueue(self.catalogue)
        self.outbox = Outbox(self.catalogue, self.config.timing.retry)
        series = write_phantom_series(root / "in", uid_seed="web")
        from node.catalogue import InstanceRecord

        for path, sop in zip(series.paths, series.sop_instance_uids, strict=True):
            self.catalogue.record_instance(InstanceRecord(
                sop_instance_uid=sop, series_uid=series.series_uid, study_uid=series.study_uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4", path=path,
                size_bytes=path.stat().st_size, sha256="0" * 64, calling_ae="SCANNER",
                modality="MR"), reopen_complete=False)
        self.series_uid = series.series_uid
        self.done = self.queue.enqueue(series.series_uid, rule="mr", model="a,b",
                                       seg_type="binary", destinations=("pacs",),
                                       study_uid=series.study_uid)
        folder = root / "out" / f"job-{self.done}" / series.series_uid
        folder.mkdir(parents=True)
        rows = [{"model": "a", "label": 1, "structure": "liver", "voxel_count": 10,
                 "volume_ml": 1.5, "mean_intensity": None, "intensity_unit": "",
                 "touches_fov_edge": False}]
        (folder / "volumes.json").write_text(json.dumps({"structures": rows, "qc_flags": []}))
        (folder / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\nstand-in")
        (folder / "seg.dcm").write_bytes(b"")
        assert self.queue.claim() is not None
        self.queue.complete(self.done, {"volumes": [{"key": series.series_uid,
                                                     "folder": str(folder), "status": "done"}]})
        self.failed = self.queue.enqueue("1.2.3", rule="mr", model=None, seg_type="binary",
                                         destinations=())
        assert self.queue.claim() is not None
        self.queue.fail(self.failed, "no instances of the job's series are in the spool")
        self.outbox.add(self.done, "pacs", folder / "seg.dcm", "2.25.7")
        [delivery] = self.outbox.due()
        self.outbox.failed_permanent(delivery, "association rejected")
        self.delivery = delivery.id
        self.metrics = NodeMetrics(lambda: {
            "jobs": self.queue.counts(), "outbox": {}, "series": {}, "disk_free_bytes": 123,
            "device_memory": [device_memory("cpu")],
            "workers": [{"worker": "1", "device": "cpu", "job": self.done, "memory": ""},
                        {"worker": "2", "device": "cpu", "job": None, "memory": ""}]})
        ctx = WebContext(self.config, self.catalogue, self.queue, self.outbox, time.time())
        self.client = TestClient(create_app(
            ctx, self.metrics, readiness=lambda: {"listener_accepting": True,
                                                  "model_loaded": False},
            models=lambda: [{"name": "demo", "version": "1", "models": ["model"],
                             "folds": [0], "structures": 11, "modalities": ["MR"],
                             "input_orientation": "LPS", "weights_sha256": "ab" * 32,
                             "archive_check": "", "licence": "Apache-2.0"}]))


@pytest.fixture()
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, {"token": TOKEN})


def test_overview_and_jobs_read_without_token_on_loopback(site: Site) -> None:
    overview = site.client.get("/api/overview").json()
    assert overview["ae_title"] == "SEGNODE" and overview["jobs"]["failed"] == 1
    assert overview["last_hour"]["instances"] == 6
    jobs = site.client.get("/api/jobs").json()
    assert {j["id"]: j["state"] for j in jobs} == {site.done: "done", site.failed: "failed"}
    detail = site.client.get(f"/api/jobs/{site.done}").json()
    assert detail["models"] == ["a", "b"]
    assert [s["stage"] for s in detail["stages"]] == ["received", "complete", "segmented",
                                                      "written", "delivered"]
    assert detail["stages"][3]["at"] and detail["stages"][4]["at"] is None  # not delivered
    assert detail["volumes"][0]["previews"] == ["preview.png"]
    assert detail["header"]["modality"] == "MR" and "patient_name" not in detail["header"]
    page = site.client.get(f"/jobs/{site.done}")
    assert page.status_code == 200 and "liver" in page.text and "preview.png" in page.text
    [study] = site.client.get("/api/studies").json()
    assert [(x["series_uid"], x["state"]) for x in study["series"]] == [
        (site.series_uid, "receiving")]
    assert study["first_received_at"] <= study["last_received_at"]
    for path in ("/", "/associations", "/studies", "/jobs", "/failures", "/destinations",
                 "/models", "/config"):
        assert site.client.get(path).status_code == 200, path


def test_no_patient_names_on_pages_unless_allowed(tmp_path: Path) -> None:
    from pydicom import dcmread

    hidden = Site(tmp_path / "a", {"token": TOKEN})
    name = str(dcmread(hidden.catalogue.series_paths(hidden.series_uid)[0]).PatientName)
    assert name  # the phantom has a patient name to leak
    for path in ("/", f"/jobs/{hidden.done}", "/jobs", "/failures", "/studies",
                 f"/api/jobs/{hidden.done}"):
        assert name not in hidden.client.get(path).text, path
    shown = Site(tmp_path / "b", {"token": TOKEN, "show_patient_names": True})
    assert name in shown.client.get(f"/jobs/{shown.done}").text


def test_actions_need_the_token(site: Site) -> None:
    url = f"/api/deliveries/{site.delivery}/retry"
    assert site.client.post(url).status_code == 401
    assert site.client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = site.client.post(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and site.outbox.list()[0].state == "pending"
    assert site.client.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 409
    retried = site.client.post(f"/api/jobs/{site.failed}/retry",
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert retried.json() == {"job": site.failed, "state": "queued"}


def test_actions_are_off_without_a_token(tmp_path: Path) -> None:
    site = Site(tmp_path, {})
    answer = site.client.post(f"/api/jobs/{site.failed}/retry")
    assert answer.status_code == 403 and "web.token" in answer.json()["detail"]


def test_off_loopback_every_page_needs_the_token(tmp_path: Path) -> None:
    site = Site(tmp_path, {"host": "0.0.0.0", "token": TOKEN})
    assert site.client.get("/api/overview").status_code == 401
    assert site.client.get("/").status_code == 401
    assert site.client.get("/api/overview",
                           headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert site.client.get("/healthz").status_code == 200  # probes need no token


def test_off_loopback_without_token_is_refused_at_start() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="web.token: required when web.host is 0.0.0.0"):
        NodeConfig(web={"host": "0.0.0.0"})


def test_config_page_hides_secrets(site: Site) -> None:
    config = site.client.get("/api/config").json()
    assert config["web"]["token"] == "***"
    assert TOKEN not in site.client.get("/config").text


def test_export_of_volume_tables(site: Site) -> None:
    text = site.client.get("/api/export/volumes.csv", params={"since": "2000-01-01"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["job_id"], r["model"], r["structure"], r["volume_ml"]) for r in rows] == [
        (str(site.done), "a", "liver", "1.5")]
    assert site.client.get("/api/export/volumes.csv",
                           params={"since": "2999-01-01"}).text.count("\n") == 1
    assert site.client.get("/api/export/volumes.csv", params={"since": "yesterday"}
                           ).status_code == 422
    served = site.client.get(f"/api/jobs/{site.done}/files/{site.series_uid}/preview.png")
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    assert site.client.get(f"/api/jobs/{site.done}/files/{site.series_uid}/seg.dcm"
                           ).status_code == 404


def test_metrics_health_and_readiness(site: Site) -> None:
    site.metrics.association_closed("rejected (calling AE title 'X' is not configured)", 0, 0, 0)
    site.metrics.association_closed("released", 6, 1, 6000)
    site.metrics.job_finished("done", {"process": 4.2, "segment.network": 3.1})
    text = site.client.get("/metrics").text
    assert 'segnode_associations_total{result="calling_ae"} 1.0' in text
    assert 'segnode_associations_total{result="accepted"} 1.0' in text
    assert "segnode_instances_received_total 5.0" in text
    assert 'segnode_jobs{state="failed"} 1.0' in text
    assert 'segnode_stage_seconds_count{stage="process"} 1.0' in text
    assert 'segnode_stage_seconds_sum{stage="segment.network"} 3.1' in text
    assert "segnode_disk_free_bytes 123.0" in text
    resident = re.search(r'segnode_device_memory_used_bytes\{device="cpu"\} ([\d.e+]+)', text)
    assert resident and float(resident.group(1)) > 50e6  # this test process, torch not needed
    assert 'segnode_worker_busy{device="cpu",worker="1"} 1.0' in text
    assert 'segnode_worker_busy{device="cpu",worker="2"} 0.0' in text
    assert site.client.get("/healthz").json() == {"status": "alive"}
    ready = site.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["model_loaded"] is False
    assert "/api/jobs/{job_id}" in site.client.get("/openapi.json").json()["paths"]
