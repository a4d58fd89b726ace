"""Drive OHIF in headless Chromium for one SEG and record what is on screen.

Run as a script inside the test's network namespace::

    python _browse.py JOB.json RESULT.json

``JOB.json`` holds ``base`` (the viewer origin), ``study_uid``,
``seg_series_uid``, ``out_dir`` (screenshots) and ``timeout_s``. The script
opens the study with the SEG as initial series, waits for the console line
``[SEG load] SEG parse complete``, reads the segment panel (labels and
colours), steps to the centre slice, and saves the viewport canvas with the
overlay shown and hidden (``*-overlay-on.png``, ``*-overlay-off.png``) plus a
page screenshot. ``RESULT.json`` records all of it; on failure it has
``error`` and the script exits with 1. Playwright drives the system Chromium
(``/usr/bin/chromium``); it never downloads a browser.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # not the builtin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
SEG_DONE = "[SEG load] SEG parse complete"
CANVAS = "canvas.cornerstone-canvas"
SLICE_TEXT = '[data-cy="viewport-overlay-bottom-right"]'
ROW_TITLE = '[data-cy="data-row-title"]'
PANEL_BUTTON = '[data-cy="panelSegmentation-btn"]'
VISIBILITY = '[data-cy^="all-segments-visibility-toggle"]'
INIT_SCRIPT = """
localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
"""


class Recorder:
    """Console lines and timings of one page."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}

    def on_console(self, msg: Any) -> None:
        self.console.append(f"{msg.type}: {msg.text}"[:500])

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.t0, 2)

    def seen(self, text: str) -> bool:
        return any(text in line for line in self.console)


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until truthy; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def canvas_png(page: Page) -> str:
    """The viewport canvas as a PNG data URL (2D canvas: readable as is)."""
    return page.eval_on_selector(CANVAS, "c => c.toDataURL('image/png')")


def stable_canvas(page: Page, *, differs_from: str | None = None, timeout: float = 20.0) -> str:
    """Wait until the canvas shows the same picture twice 0.4 s apart (and a new one)."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        current = canvas_png(page)
        if current == previous and current != differs_from:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError("canvas did not settle" if current != differs_from
                               else "canvas did not change")
        previous = current
        time.sleep(0.4)


def save_png(data_url: str, path: Path) -> str:
    path.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    return str(path)


def slice_position(page: Page) -> tuple[int, int, str]:
    """(1-based index, count, raw text) from the viewport's bottom-right overlay."""
    text = page.inner_text(SLICE_TEXT)
    match = re.search(r"\((\d+)/(\d+)\)", text)
    if not match:
        raise ValueError(f"no slice position in overlay text {text!r}")
    return int(match.group(1)), int(match.group(2)), text


def go_to_slice(page: Page, target: int) -> tuple[int, int, str]:
    """Step with ArrowUp/ArrowDown until the overlay shows slice ``target``."""
    page.hover(CANVAS)
    index, count, text = slice_position(page)
    key = "ArrowDown"
    for _ in range(3 * count):
        if index == target:
            return index, count, text
        page.keyboard.press(key)
        try:
            new = wait_until(lambda old=index: (p := slice_position(page))[0] != old and p,
                             5, "slice change", 0.05)
        except TimeoutError:
            new = slice_position(page)
        if abs(new[0] - target) > abs(index - target) or new[0] == index:
            key = "ArrowUp" if key == "ArrowDown" else "ArrowDown"
        index, count, text = new
    raise RuntimeError(f"could not reach slice {target}: at {index}/{count}")


def segment_rows(page: Page, rec: Recorder, timeout: float) -> list[dict[str, str]]:
    """Labels and CSS colours of the segment panel rows (opens the panel if needed)."""
    for attempt in range(3):
        try:
            page.wait_for_selector(ROW_TITLE, timeout=1000 if attempt == 0 else timeout * 250)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            rec.mark(f"panel_button_click_{attempt + 1}")
            page.click(PANEL_BUTTON)
    return page.eval_on_selector_all(
        '[data-cy="data-row"]',
        """rows => rows.map(r => {
            const t = r.querySelector('[data-cy="data-row-title"]');
            const c = r.querySelector('[data-cy="data-row-colorhex"]');
            return {title: t ? t.textContent.trim() : null,
                    color: c ? getComputedStyle(c).backgroundColor : null};
        }).filter(r => r.title !== null)""",
    )


def browse(page: Page, job: dict[str, Any], rec: Recorder, result: dict[str, Any]) -> None:
    out, name, timeout = Path(job["out_dir"]), job["name"], float(job["timeout_s"])
    url = (f"{job['base']}/viewer?StudyInstanceUIDs={job['study_uid']}"
           f"&initialSeriesInstanceUID={job['seg_series_uid']}")
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(CANVAS, timeout=timeout * 1000)
    rec.mark("canvas")
    wait_until(lambda: rec.seen(SEG_DONE), timeout, f"console line {SEG_DONE!r}", 0.2)
    rec.mark("seg_parsed")
    result["rows"] = segment_rows(page, rec, timeout)
    rec.mark("rows")
    result["slice_initial"] = slice_position(page)[2]
    index, count, text = go_to_slice(page, (job["slice_count"] + 1) // 2)
    result.update(slice_index=index, slice_count=count, slice_text=text)
    rec.mark("centre_slice")
    shown = stable_canvas(page)
    result["overlay_on"] = save_png(shown, out / f"{name}-overlay-on.png")
    page.click(VISIBILITY)
    hidden = stable_canvas(page, differs_from=shown)
    result["overlay_off"] = save_png(hidden, out / f"{name}-overlay-off.png")
    page.click(VISIBILITY)
    again = stable_canvas(page, differs_from=hidden)
    result["overlay_restored_identical"] = again == shown
    rec.mark("screenshots")
    page.screenshot(path=str(out / f"{name}-page.png"))
    result["page"] = str(out / f"{name}-page.png")


def main(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    rec = Recorder()
    result: dict[str, Any] = {}
    status = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          service_workers="block")
            context.add_init_script(INIT_SCRIPT)
            page = context.new_page()
            page.on("console", rec.on_console)
            rec.mark("browser")
            try:
                browse(page, job, rec, result)
            except Exception as exc:  # noqa: BLE001 - reported in the result file
                result["error"] = f"{type(exc).__name__}: {exc}"
                error_png = Path(job["out_dir"]) / f"{job['name']}-error.png"
                try:
                    page.screenshot(path=str(error_png))
                    result["page"] = str(error_png)
                except Exception:  # noqa: BLE001
                    pass
                status = 1
        finally:
            browser.close()
    result["console"] = rec.console
    result["timings"] = rec.timings
    Path(result_path).write_text(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
