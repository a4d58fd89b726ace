"""The catalogue's side of corrections: finding a series' job, one examiner per SEG."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.catalogue import Catalogue
from node.jobqueue import SqlJobQueue
from tests.node.fakes import FakeClock


@pytest.fixture()
def catalogue(database_url: str, clock: FakeClock) -> Iterator[Catalogue]:
    catalogue = Catalogue(database_url, clock=clock)
    yield catalogue
    catalogue.close()


def _done(queue: SqlJobQueue, series_uid: str, series_uids: tuple[str, ...] = ()) -> int:
    job_id = queue.enqueue(series_uid, rule="mr", model=None, seg_type="binary",
                           destinations=(), series_uids=series_uids)
    claimed = queue.claim()
    assert claimed is not None and claimed.id == job_id
    queue.complete(job_id, {"outputs": []})
    return job_id


def test_the_newest_finished_job_of_a_series_is_found_from_the_jobs_alone(
        catalogue: Catalogue) -> None:
    queue = SqlJobQueue(catalogue)
    single = _done(queue, "1.2.3")
    stations = _done(queue, "1.2.4", series_uids=("1.2.4", "1.2.5", "1.2.50"))
    # No series rows at all (as after retention purged them): the jobs still tell.
    assert catalogue.get_series("1.2.5") is None
    assert catalogue.done_job_of_series(["1.2.5"])["id"] == stations
    assert catalogue.done_job_of_series(["9.9", "1.2.3"])["id"] == single
    assert catalogue.done_job_of_series(["1.2.51"]) is None  # no prefix matches
    assert catalogue.done_job_of_series([]) is None
    again = _done(queue, "1.2.3")
    assert catalogue.done_job_of_series(["1.2.3"])["id"] == again
    queue.enqueue("1.2.3", rule="mr", model=None, seg_type="binary", destinations=())
    assert catalogue.done_job_of_series(["1.2.3"])["id"] == again  # queued ones do not count


def _seg(received_at: float) -> dict:
    return {"sop_instance_uid": "1.9.1", "series_uid": "1.9", "study_uid": "1",
            "path": "/spool/1/1.9/1.9.1.dcm", "received_at": received_at}


def test_one_examiner_per_seg_and_a_newer_copy_is_examined_again(
        catalogue: Catalogue) -> None:
    first = catalogue.claim_correction(_seg(100.0))
    assert first is not None
    assert catalogue.claim_correction(_seg(100.0)) is None  # being examined
    catalogue.finish_correction(first, {"state": "correction", "reason": "r", "job_id": 7,
                                        "model": "demo", "unmapped": [{"segment": "s"}]},
                                [{"model": "demo", "structure": "liver", "label": 4,
                                  "dice": 0.9, "hd95_mm": 2.0, "volume_ml": 1.0,
                                  "corrected_volume_ml": 1.1, "connected": None,
                                  "corrected_connected": None}])
    [row] = catalogue.list_corrections()
    assert (row["state"], row["job_id"], row["unmapped"]) == ("correction", 7, [{"segment": "s"}])
    assert len(catalogue.correction_metrics(correction_id=first)) == 1
    assert catalogue.claim_correction(_seg(100.0)) is None  # examined, same copy
    assert catalogue.claim_correction(_seg(200.0)) == first  # a newer copy: again
    [row] = catalogue.list_corrections()
    assert (row["state"], row["job_id"], row["received_at"]) == ("examining", None, 200.0)
    assert catalogue.correction_metrics(correction_id=first) == []
    assert catalogue.forget_unfinished_corrections() == 1  # a crash left it: examined anew
    assert catalogue.list_corrections() == []
