"""Stage timings kept by Progress, and their sum over a job's volumes."""

from __future__ import annotations

import io
import time

from node.pipeline import VolumeResult, sum_timings
from node.progress import Progress


def test_stages_are_timed_per_series_and_reset_at_the_next() -> None:
    progress = Progress(2, stream=io.StringIO())
    progress.start("1.2.3")  # stage "read"
    time.sleep(0.05)
    progress.stage("segment")
    progress.detail("segment.network", 0.5)
    time.sleep(0.1)
    progress.stage("write")
    timings = progress.timings()
    assert 0.04 <= timings["read"] < 0.1
    assert 0.09 <= timings["segment"] < 0.2
    assert timings["segment.network"] == 0.5 and "write" in timings
    progress.start("1.2.4", read_s=0.7)  # files read before the run knew its volumes
    timings = progress.timings()
    assert set(timings) == {"read"} and 0.7 <= timings["read"] < 0.75


def test_job_timings_sum_over_volumes() -> None:
    results = [VolumeResult("a", "done", timings={"read": 1.0, "segment.network": 2.0}),
               VolumeResult("b", "done", timings={"read": 0.5})]
    assert sum_timings(results) == {"read": 1.5, "segment.network": 2.0}
