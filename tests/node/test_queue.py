"""The durable job queue (:class:`node.jobqueue.SqlJobQueue`) on a real SQLite catalogue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from node.catalogue import Catalogue
from node.jobqueue import SqlJobQueue
from tests.node.fakes import FakeClock


@pytest.fixture()
def queue(database_url: str, clock: FakeClock) -> Iterator[SqlJobQueue]:
    catalogue = Catalogue(database_url, clock=clock)
    yield SqlJobQueue(catalogue)
    catalogue.close()


def _enqueue(queue: SqlJobQueue, series_uid: str, clock: FakeClock) -> int:
    job_id = queue.enqueue(series_uid, rule="mr", model=None, seg_type="binary",
                           destinations=("pacs", "archive"))
    clock.advance(1)
    return job_id


def test_claim_takes_the_oldest_and_marks_it_running(queue: SqlJobQueue,
                                                     clock: FakeClock) -> None:
    first, second = _enqueue(queue, "1.1", clock), _enqueue(queue, "1.2", clock)
    queued = queue.get(first)
    assert queued is not None
    assert (queued.state, queued.attempts, queued.started_at, queued.created_at) == (
        "queued", 0, None, clock.now - 2)
    claimed = queue.claim()
    assert claimed is not None
    assert (claimed.id, claimed.series_uid, claimed.state, claimed.attempts) == (
        first, "1.1", "running", 1)
    assert claimed.started_at == clock.now
    assert (claimed.rule, claimed.model, claimed.seg_type, claimed.destinations) == (
        "mr", None, "binary", ("pacs", "archive"))
    assert queue.claim().id == second
    assert queue.claim() is None


def test_complete_and_fail_store_the_outcome(queue: SqlJobQueue, clock: FakeClock) -> None:
    done_id, failed_id = _enqueue(queue, "1.1", clock), _enqueue(queue, "1.2", clock)
    queue.claim()
    queue.claim()
    queue.set_output_dir(done_id, "/out/job-1")
    queue.complete(done_id, {"volumes": 1, "files": ["seg.dcm", "sr.dcm"]}, "2 files")
    clock.advance(5)
    queue.fail(failed_id, "InputRejected: 2 slices")
    done, failed = queue.get(done_id), queue.get(failed_id)
    assert (done.state, done.reason, done.output_dir) == ("done", "2 files", "/out/job-1")
    assert done.result == {"volumes": 1, "files": ["seg.dcm", "sr.dcm"]}
    assert done.finished_at == clock.now - 5
    assert (failed.state, failed.reason, failed.result, failed.finished_at) == (
        "failed", "InputRejected: 2 slices", {}, clock.now)


def test_requeue_only_failed_or_done(queue: SqlJobQueue, clock: FakeClock) -> None:
    running, failed, done = (_enqueue(queue, uid, clock) for uid in ("1.1", "1.2", "1.3"))
    queue.claim(), queue.claim(), queue.claim()
    queue.fail(failed, "boom")
    queue.complete(done, {})
    waiting = _enqueue(queue, "1.4", clock)
    assert not queue.requeue(running)
    assert not queue.requeue(waiting)
    assert not queue.requeue(9999)
    assert queue.requeue(failed) and queue.requeue(done)
    again = queue.get(failed)
    assert (again.state, again.reason, again.finished_at) == ("queued", "", None)
    assert queue.get(running).state == "running"
    assert [queue.claim().id for _ in range(3)] == [failed, done, waiting]
    assert queue.get(failed).attempts == 2


def test_requeue_interrupted_puts_running_jobs_back(queue: SqlJobQueue, clock: FakeClock) -> None:
    ids = [_enqueue(queue, f"1.{n}", clock) for n in range(4)]
    for _ in range(3):
        queue.claim()
    queue.complete(ids[2], {})
    assert sorted(queue.requeue_interrupted()) == [ids[0], ids[1]]
    states = {job_id: queue.get(job_id) for job_id in ids}
    assert [states[i].state for i in ids] == ["queued", "queued", "done", "queued"]
    assert "interrupted" in states[ids[0]].reason
    assert queue.requeue_interrupted() == []


def test_counts_has_every_state(queue: SqlJobQueue, clock: FakeClock) -> None:
    assert queue.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    ids = [_enqueue(queue, f"1.{n}", clock) for n in range(5)]
    for _ in range(3):
        queue.claim()
    queue.complete(ids[0], {})
    queue.fail(ids[1], "x")
    assert queue.counts() == {"queued": 2, "running": 1, "done": 1, "failed": 1}
    assert [job.id for job in queue.list("queued")] == [ids[4], ids[3]]  # newest first


def test_enqueue_joins_the_callers_transaction(queue: SqlJobQueue) -> None:
    catalogue: Catalogue = queue.catalogue
    with pytest.raises(RuntimeError), catalogue.begin() as db:
        queue.enqueue("1.1", rule="mr", model=None, seg_type="binary", destinations=(), db=db)
        raise RuntimeError("crash before commit")
    assert queue.list() == [] and queue.claim() is None


def test_concurrent_claimers_never_take_the_same_job(database_url: str, clock: FakeClock) -> None:
    """Workers in threads, each with its own connection pool, drain one queue between them."""
    first = Catalogue(database_url, clock=clock)
    ids = {_enqueue(SqlJobQueue(first), f"1.{n}", clock) for n in range(60)}
    claimed: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(len(claimed))

    def drain(mine: list[int]) -> None:
        catalogue = Catalogue(first.url, clock=clock)
        queue = SqlJobQueue(catalogue)
        start.wait()
        while (job := queue.claim()) is not None:
            mine.append(job.id)
            time.sleep(0.005)  # the job's work: the other claimers go meanwhile
        catalogue.close()

    threads = [threading.Thread(target=drain, args=(mine,)) for mine in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    taken = [job_id for mine in claimed for job_id in mine]
    assert sorted(taken) == sorted(ids)  # every job once, none twice
    assert sum(bool(mine) for mine in claimed) >= 2  # the claims really interleaved
    queue = SqlJobQueue(first)
    assert {job.attempts for job in queue.list(limit=100)} == {1}
    first.close()


def test_claims_take_urgent_jobs_first_then_the_oldest(queue: SqlJobQueue,
                                                       clock: FakeClock) -> None:
    batch = queue.enqueue("1.1", rule="r", model=None, seg_type="binary", destinations=(),
                          priority=0)
    first = _enqueue(queue, "1.2", clock)
    urgent = queue.enqueue("1.3", rule="r", model=None, seg_type="binary", destinations=(),
                           priority=2)
    second = _enqueue(queue, "1.4", clock)
    order = [queue.claim().id for _ in range(4)]  # type: ignore[union-attr]
    assert order == [urgent, first, second, batch]


def test_a_lease_that_runs_out_puts_the_job_back(queue: SqlJobQueue, clock: FakeClock) -> None:
    job_id = _enqueue(queue, "2.1", clock)
    claimed = queue.claim("hostA:11:cpu", lease_s=30)
    assert claimed is not None and claimed.lease_owner == "hostA:11:cpu"
    assert queue.claim_job(job_id, "hostB:12:cpu", 30) is None  # running: not taken twice
    clock.advance(20)
    assert queue.renew(job_id, "hostA:11:cpu", 30)  # renewed: now good until +50
    assert not queue.renew(job_id, "hostB:12:cpu", 30)  # only its holder renews it
    clock.advance(29)
    assert queue.requeue_expired() == []
    clock.advance(2)
    assert queue.requeue_expired() == [job_id]
    again = queue.get(job_id)
    assert again is not None and (again.state, again.lease_owner, again.published_at) == (
        "queued", "", None)
    assert not queue.renew(job_id, "hostA:11:cpu", 30)  # the dead worker's lease is gone
    taken = queue.claim_job(job_id, "hostB:12:cpu", 30)
    assert taken is not None and taken.attempts == 2


def test_a_newer_job_of_a_series_waits_while_the_older_runs(queue: SqlJobQueue,
                                                            clock: FakeClock) -> None:
    older = _enqueue(queue, "3.1", clock)
    assert queue.claim("a", 30).id == older  # type: ignore[union-attr]
    newer = _enqueue(queue, "3.1", clock)  # a late instance: the series again
    other = _enqueue(queue, "3.2", clock)
    assert [job.id for job in queue.to_publish(republish_after_s=60)] == [other]
    assert queue.claim("b", 30).id == other  # type: ignore[union-attr]
    assert queue.claim("b", 30) is None  # the newer one waits...
    queue.mark_published(newer)
    assert queue.claim_job(newer, "b", 30) is None  # ...even when its message comes
    waiting = queue.get(newer)
    assert waiting is not None and (waiting.state, waiting.published_at) == ("queued", None)
    queue.complete(older, {})
    assert queue.claim_job(newer, "b", 30) is not None  # the older is done: it runs


def test_max_running_holds_further_claims_until_a_job_ends(queue: SqlJobQueue,
                                                           clock: FakeClock) -> None:
    limited = SqlJobQueue(queue.catalogue, max_running=2)
    ids = [_enqueue(queue, f"1.{n}", clock) for n in range(4)]
    first, second = limited.claim("a"), limited.claim_job(ids[1], "b", 60)
    assert (first.id, second.id) == (ids[0], ids[1])
    assert limited.claim("c") is None
    assert limited.claim_job(ids[2], "c", 60) is None
    assert queue.get(ids[2]).state == "queued"  # waits, is not refused
    limited.complete(first.id, {})
    assert limited.claim("c").id == ids[2]
    assert limited.claim("d") is None
    assert queue.claim("unlimited").id == ids[3]  # the limit belongs to the queue that has it
