"""Walk the dashboard in headless Chromium, as hospital IT would, and record what it shows.

Run as a script inside the test's network namespace::

    python _dashboard_browse.py JOB.json RESULT.json

``JOB.json`` holds ``base`` (the dashboard origin), ``token``, ``job_id``,
``delivery_id``, ``out_dir`` (screenshots) and ``timeout_s``. The steps:
open the overview; open the finished job from the jobs page and wait for its
preview image; on the failures page enter the token and press Retry on the
failed delivery; reload the job until the delivery shows ``done``; press
C-ECHO on the destinations page; visit the associations, studies, jobs,
models and configuration pages. A screenshot of each page goes to
``out_dir``. Playwright drives the system
Chromium (``/usr/bin/chromium``); it never downloads a browser.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def walk(job: dict[str, Any]) -> dict[str, Any]:
    """The steps above; returns what each page showed."""
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    timeout_ms = int(job["timeout_s"] * 1000)
    found: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(timeout_ms)
        page.goto(job["base"] + "/")
        found["listener"] = page.inner_text('[data-testid="listener"]')
        found["device"] = page.inner_text('[data-testid="device"]')
        page.screenshot(path=str(out / "overview.png"), full_page=True)

        page.click('[data-testid="nav-jobs"]')
        page.click(f'[data-testid="job-link-{job["job_id"]}"]')
        page.wait_for_selector('[data-testid="preview"]')
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=preview]')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        found["preview_sizes"] = page.eval_on_selector_all(
            '[data-testid="preview"]', "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
        found["job_state"] = page.inner_text('[data-testid="job-state"]')
        found["volume_rows"] = page.eval_on_selector_all(
            '[data-testid="volumes"] tr', "rows => rows.length - 1")
        found["delivery_before"] = page.inner_text(
            f'[data-testid="delivery-state-{job["delivery_id"]}"]')
        page.screenshot(path=str(out / "job.png"), full_page=True)

        page.click('[data-testid="nav-failures"]')
        page.fill('[data-testid="token"]', job["token"])
        page.dispatch_event('[data-testid="token"]', "change")
        page.click(f'[data-testid="retry-delivery-{job["delivery_id"]}"]')
        result = page.wait_for_selector(f'#delivery-result-{job["delivery_id"]}:not(:empty)')
        found["retry_answer"] = result.inner_text()
        page.screenshot(path=str(out / "failures-retried.png"), full_page=True)

        deadline = time.monotonic() + job["timeout_s"]
        state = ""
        while time.monotonic() < deadline:
            page.goto(f'{job["base"]}/jobs/{job["job_id"]}')
            state = page.inner_text(f'[data-testid="delivery-state-{job["delivery_id"]}"]')
            if state == "done":
                break
            time.sleep(1.0)
        found["delivery_after"] = state
        page.screenshot(path=str(out / "job-delivered.png"), full_page=True)

        page.goto(job["base"] + "/destinations")
        page.click('[data-testid="echo-pacs"]')
        found["echo"] = page.wait_for_selector(
            '[data-testid="echo-pacs-result"]:not(:empty)').inner_text()
        page.screenshot(path=str(out / "destinations.png"), full_page=True)
        for name in ("associations", "studies", "jobs", "models", "config"):
            page.goto(f'{job["base"]}/{name}')
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            if name == "associations":
                found["association_rows"] = page.eval_on_selector_all(
                    '[data-testid="associations"] tr', "rows => rows.length - 1")
            elif name == "studies":
                found["study_rows"] = page.eval_on_selector_all(
                    '[data-testid="studies"] tr', "rows => rows.length - 1")
            elif name in ("models", "config"):
                found[f"{name}_text"] = page.inner_text("main")
        browser.close()
    return found


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = walk(job)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        Path(sys.argv[2]).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
