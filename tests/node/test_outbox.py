"""The outbox: idempotent deliveries, exponential backoff, giving up, retrying."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.catalogue import Catalogue
from node.config import RetryConfig
from node.outbox import Delivery, Outbox
from tests.node.fakes import FakeClock

RETRY = RetryConfig(initial_delay_s=10, backoff_factor=3, max_delay_s=100, max_age_s=1000)
SEG = Path("/out/job-1/1.2.3/seg.dcm")
SR = Path("/out/job-1/1.2.3/sr.dcm")


@pytest.fixture()
def box(database_url: str, clock: FakeClock) -> Iterator[Outbox]:
    catalogue = Catalogue(database_url, clock=clock)
    yield Outbox(catalogue, RETRY)
    catalogue.close()


def _only(box: Outbox) -> Delivery:
    [delivery] = box.list()
    return delivery


def test_add_is_idempotent_per_job_destination_and_file(box: Outbox) -> None:
    for _ in range(3):
        box.add(1, "pacs", SEG, "2.25.1")
    box.add(1, "pacs", SR, "2.25.2")
    box.add(1, "archive", SEG, "2.25.1")
    box.add(2, "pacs", SEG, "2.25.1")
    rows = sorted((d.job_id, d.destination, d.path.name) for d in box.list())
    assert rows == [(1, "archive", "seg.dcm"), (1, "pacs", "seg.dcm"), (1, "pacs", "sr.dcm"),
                    (2, "pacs", "seg.dcm")]
    assert box.counts() == {"pending": 4, "done": 0, "failed": 0}


def test_adding_again_after_a_rerun_makes_a_delivered_row_pending(box: Outbox,
                                                                  clock: FakeClock) -> None:
    box.add(1, "pacs", SEG, "2.25.1")
    [row] = box.due()
    box.delivered(row.id)
    clock.advance(60)
    box.add(1, "pacs", SEG, "2.25.1")  # the job ran again
    [again] = box.list()
    assert again.id == row.id
    assert (again.state, again.attempts, again.created_at, again.delivered_at) == (
        "pending", 0, clock.now, None)


def test_new_delivery_is_due_at_once_and_done_when_delivered(box: Outbox,
                                                             clock: FakeClock) -> None:
    box.add(1, "pacs", SEG, "2.25.1")
    [due] = box.due()
    assert (due.state, due.attempts, due.next_attempt_at, due.created_at) == (
        "pending", 0, clock.now, clock.now)
    clock.advance(2)
    box.delivered(due.id)
    done = _only(box)
    assert (done.state, done.attempts, done.delivered_at) == ("done", 1, clock.now)
    assert box.due() == []


def test_transient_failures_back_off_exponentially(box: Outbox, clock: FakeClock) -> None:
    """Delay after the n-th failure: 10 * 3**(n-1) s, capped at 100 s."""
    box.add(1, "pacs", SEG, "2.25.1")
    for attempt, delay in enumerate([10, 30, 90, 100, 100], start=1):
        [delivery] = box.due()
        failed_at = clock.advance(1)
        assert box.failed_transient(delivery, f"refused {attempt}") == "pending"
        after = _only(box)
        assert (after.attempts, after.last_error) == (attempt, f"refused {attempt}")
        assert after.next_attempt_at == failed_at + delay
        clock.now = after.next_attempt_at - 0.001
        assert box.due() == []  # not before its time
        clock.now = after.next_attempt_at
    assert [d.id for d in box.due()] == [after.id]


def test_transient_failure_past_max_age_gives_up(box: Outbox, clock: FakeClock) -> None:
    box.add(1, "pacs", SEG, "2.25.1")
    created = clock.now
    [delivery] = box.due()
    clock.advance(500)
    assert box.failed_transient(delivery, "association rejected") == "pending"
    clock.now = created + 1000  # max_age_s reached
    [delivery] = box.due()
    assert box.failed_transient(delivery, "association rejected") == "failed"
    failed = _only(box)
    assert failed.state == "failed" and failed.attempts == 2
    assert failed.last_error == "gave up after 2 attempts: association rejected"
    clock.advance(10_000)
    assert box.due() == []
    assert box.counts() == {"pending": 0, "done": 0, "failed": 1}


def test_permanent_failure_fails_at_once(box: Outbox, clock: FakeClock) -> None:
    box.add(1, "pacs", SEG, "2.25.1")
    [delivery] = box.due()
    box.failed_permanent(delivery, "C-STORE status 0xA900: data set does not match SOP class")
    failed = _only(box)
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert failed.last_error.startswith("C-STORE status 0xA900")
    clock.advance(10_000)
    assert box.due() == []


def test_retry_one_or_all_makes_failed_pending_and_due_now(box: Outbox,
                                                           clock: FakeClock) -> None:
    for n, path in enumerate((SEG, SR, Path("/out/x.dcm"))):
        box.add(1, "pacs", path, f"2.25.{n}")
    first, second, third = box.due()
    box.failed_permanent(first, "no")
    box.failed_permanent(second, "no")
    clock.advance(50)
    assert box.retry(third.id) == 0  # still pending: nothing to retry
    assert box.retry(first.id) == 1
    [again] = [d for d in box.list() if d.id == first.id]
    assert (again.state, again.next_attempt_at) == ("pending", clock.now)
    assert {d.id for d in box.due()} == {first.id, third.id}
    clock.advance(50)
    assert box.retry(None) == 1
    assert box.list("failed") == []
    assert {d.id for d in box.due()} == {first.id, second.id, third.id}
    assert [d.next_attempt_at for d in box.list() if d.id == second.id] == [clock.now]
