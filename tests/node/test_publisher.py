"""The publisher hands queued jobs to a real Redis; the catalogue stays the truth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.catalogue import Catalogue
from node.celery_app import QUEUE_NAME
from node.config import QueueConfig
from node.jobqueue import PRIORITIES, SqlJobQueue
from node.publisher import Publisher
from tests.node.fakes import FakeClock
from tests.servers import Redis, redis_available


@pytest.fixture()
def redis() -> Iterator[Redis]:
    reason = redis_available()
    if reason:
        pytest.skip(reason)
    server = Redis().start()
    yield server
    server.close()


@pytest.fixture()
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[SqlJobQueue]:
    catalogue = Catalogue(f"sqlite:///{tmp_path}/c.db", clock=clock)
    yield SqlJobQueue(catalogue)
    catalogue.close()


def _enqueue(queue: SqlJobQueue, uid: str, priority: str = "normal") -> int:
    return queue.enqueue(uid, rule="mr", model=None, seg_type="binary", destinations=(),
                         priority=PRIORITIES[priority])


def _drain(publisher: Publisher) -> list[int]:
    """Job ids of the messages in the broker, in the order a worker would get them."""
    ids = []
    with publisher.app.connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(QUEUE_NAME, no_ack=True)) is not None:
            ids.append(json.loads(message.body)[0][0])
    return ids


def test_queued_jobs_are_published_once_urgent_first(redis: Redis, queue: SqlJobQueue) -> None:
    batch = _enqueue(queue, "1.1", "batch")
    normal = _enqueue(queue, "1.2")
    urgent = _enqueue(queue, "1.3", "urgent")
    publisher = Publisher(QueueConfig(backend="celery", broker_url=redis.url), queue)
    try:
        assert publisher.run_once() == 3
        assert publisher.run_once() == 0  # published already
        assert _drain(publisher) == [urgent, normal, batch]
    finally:
        publisher.close()


def test_jobs_wait_in_the_catalogue_while_the_broker_is_down(
    redis: Redis, queue: SqlJobQueue, caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = Publisher(QueueConfig(backend="celery", broker_url=redis.url), queue)
    try:
        redis.stop()
        first, second = _enqueue(queue, "2.1"), _enqueue(queue, "2.2")
        assert publisher.run_once() == 0 and publisher.run_once() == 0
        assert caplog.text.count("broker unreachable") == 1  # said once per outage
        assert [job.published_at for job in queue.list()] == [None, None]
        redis.start()
        assert publisher.run_once() == 2
        assert sorted(_drain(publisher)) == [first, second]
    finally:
        publisher.close()


def test_stale_jobs_are_published_again_only_when_the_broker_lost_them(
    redis: Redis, queue: SqlJobQueue, clock: FakeClock,
) -> None:
    config = QueueConfig(backend="celery", broker_url=redis.url, republish_after_s=60)
    publisher = Publisher(config, queue)
    try:
        job = _enqueue(queue, "3.1")
        assert publisher.run_once() == 1
        clock.advance(120)  # still queued: waiting behind others, its message still there
        assert publisher.run_once() == 0
        redis.stop()
        redis.start()  # restarted empty: the message is gone
        assert publisher.run_once() == 1
        assert _drain(publisher) == [job]
    finally:
        publisher.close()
