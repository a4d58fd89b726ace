"""Hands queued jobs to the Celery broker (``queue.backend: celery``).

The catalogue is the truth: the assembler only inserts job rows, and this
loop publishes each queued job that was never published, or was published
``queue.republish_after_s`` ago and is still waiting (a broker restarted
without its messages). While the broker is down, receiving and assembling go
on; the jobs wait in the catalogue and are published when it is back.
"""

from __future__ import annotations

import logging

from kombu.exceptions import ChannelError

from node.celery_app import QUEUE_NAME, TASK_NAME, broker_priority, make_app
from node.config import QueueConfig
from node.jobqueue import Job, SqlJobQueue

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)


class Publisher:
    """Publishes queued jobs as ``segnode.run_job`` tasks."""

    def __init__(self, config: QueueConfig, queue: SqlJobQueue) -> None:
        assert config.broker_url is not None
        self.config = config
        self.queue = queue
        self.app = make_app(config)
        self._broker_down = False

    def run_once(self) -> int:
        """Publish what is due; the number published (0 while the broker is down)."""
        published = 0
        try:
            due = self._due()
        except Exception as exc:  # noqa: BLE001 - the broker is down: keep them queued
            self._note_down(exc)
            return 0
        for job in due:
            try:
                self.app.send_task(TASK_NAME, args=[job.id], queue=QUEUE_NAME,
                                   priority=broker_priority(self.config.broker_url or "",
                                                            job.priority),
                                   retry=False)
            except Exception as exc:  # noqa: BLE001 - any broker failure: keep it queued
                self._note_down(exc)
                return published
            self.queue.mark_published(job.id)
            published += 1
        if self._broker_down and published:
            logger.info("broker reachable again: %d job(s) published", published)
        self._broker_down = False
        return published

    def _due(self) -> list[Job]:
        """Jobs never published, and stale ones unless the broker still holds enough messages.

        A job published long ago may only be waiting behind others: it is
        published again only when the broker holds fewer messages than there
        are queued jobs (some were lost), so a long backlog does not pile up
        duplicates.
        """
        due = self.queue.to_publish(self.config.republish_after_s)
        stale = [job for job in due if job.published_at is not None]
        if stale:
            with self.app.connection_for_write() as connection:
                try:
                    held = connection.default_channel.queue_declare(
                        QUEUE_NAME, passive=True).message_count
                except ChannelError:  # no such queue: a broker that restarted empty
                    held = 0
            if held >= self.queue.counts()["queued"]:
                due = [job for job in due if job.published_at is None]
        return due

    def _note_down(self, exc: BaseException) -> None:
        if not self._broker_down:
            logger.warning("broker unreachable (%s): jobs wait in the catalogue",
                           type(exc).__name__)
        self._broker_down = True

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()
