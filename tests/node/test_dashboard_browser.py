"""The dashboard in a real browser: headless Chromium (Debian) driven by Playwright.

``segnode serve`` runs with Orthanc as its PACS inside a private network
namespace. A phantom series arrives while Orthanc is down, so its SEG and SR
deliveries give up (``max_age_s`` of 3 s) and show as failed. With Orthanc
back, the browser opens the overview, opens the finished job and sees its
preview, enters the token on the failures page, presses Retry on a failed
delivery, and watches the job page until that delivery is done. Screenshots
of every page are kept in the test's folder (the path is printed).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.node.test_node_e2e import NodeProcess, _skip_reason, wait_for, write_phantom
from tests.peers import NetNamespace, Orthanc, storescu

TOKEN = "dashboard-token-0123456789"
HERE = Path(__file__).resolve().parent


def _reason() -> str | None:
    if shutil.which("chromium") is None:
        return "chromium is not installed (Debian package chromium; make peers installs it)"
    return _skip_reason()


def test_overview_job_preview_and_retry_in_a_browser(tmp_path: Path) -> None:
    reason = _reason()
    if reason:
        pytest.skip(reason)
    with NetNamespace() as ns:
        orthanc = Orthanc(tmp_path / "orthanc", netns=ns)  # ports chosen, not started yet
        web_port = ns.free_port()
        node = NodeProcess(ns, tmp_path / "node", orthanc, overrides={
            "web": {"port": web_port, "token": TOKEN},
            "timing": {"series_quiet_s": 2, "study_quiet_s": 3, "poll_interval_s": 0.2,
                       "retry": {"initial_delay_s": 0.5, "max_delay_s": 1, "max_age_s": 3}},
        })
        try:
            node.start()
            ns.wait_listening([web_port], timeout=30, process=node.proc)
            series = write_phantom(tmp_path / "data", "dashboard")
            sent = storescu(series.folder, "127.0.0.1", node.port, called_aet="SEGNODE",
                            netns=ns)
            assert sent.returncode == 0, sent.stderr
            job = wait_for("the job", lambda: next(
                (j for j in node.queue.list() if j.series_uid == series.series_uid
                 and j.state == "done"), None), node)
            failed = wait_for("failed deliveries", lambda: [
                d for d in node.outbox.for_job(job.id) if d.state == "failed"] if all(
                d.state == "failed" for d in node.outbox.for_job(job.id)) else None, node)
            ready = json.loads(ns.http_request("GET", f"http://127.0.0.1:{web_port}/readyz"))
            metrics = ns.http_request("GET", f"http://127.0.0.1:{web_port}/metrics").decode()
            orthanc.start()
            shots = tmp_path / "screenshots"
            request = {"base": f"http://127.0.0.1:{web_port}", "token": TOKEN,
                       "job_id": job.id, "delivery_id": failed[0].id,
                       "out_dir": str(shots), "timeout_s": 60}
            (tmp_path / "job.json").write_text(json.dumps(request))
            run = ns.run([sys.executable, str(HERE / "_dashboard_browse.py"),
                          str(tmp_path / "job.json"), str(tmp_path / "result.json")],
                         capture_output=True, text=True, timeout=300)
            result = json.loads((tmp_path / "result.json").read_text())
            print(f"dashboard screenshots in {shots}")
            assert run.returncode == 0, result.get("error") or run.stderr[-3000:]
        finally:
            node.stop()
            orthanc.close()
    assert ready == {"ready": True, "checks": {
        "listener_accepting": True, "database_writable": True, "model_loaded": True,
        "disk_above_threshold": True}}
    assert 'segnode_associations_total{result="accepted"} 1.0' in metrics
    assert 'segnode_jobs_finished_total{state="done"} 1.0' in metrics
    assert "segnode_series_completed_total 1.0" in metrics
    assert 'segnode_deliveries_attempted_total{result="failed"}' in metrics
    assert result["listener"] == "up" and result["device"] == "cpu"
    assert result["job_state"] == "done" and result["volume_rows"] >= 5
    assert result["preview_sizes"] and all(w > 200 and h > 200
                                           for w, h in result["preview_sizes"])
    assert result["delivery_before"] == "failed"
    assert json.loads(result["retry_answer"]) == {"delivery": failed[0].id, "state": "pending"}
    assert result["delivery_after"] == "done"
    assert result["echo"].startswith('{"destination":"pacs","ok":true')
    assert result["association_rows"] >= 1 and result["study_rows"] == 1
    assert "demo" in result["models_text"] and "***" in result["config_text"]
    for name in ("overview.png", "job.png", "failures-retried.png", "job-delivered.png",
                 "associations.png", "studies.png", "jobs.png", "destinations.png",
                 "models.png", "config.png"):
        assert (shots / name).stat().st_size > 10000, name
