"""The Celery application of ``queue.backend: celery``: one task, ``segnode.run_job``.

The task carries a job id only; the catalogue holds the job. Messages are
acknowledged late (after the job's outputs are in the outbox) and given back
to the broker when a worker process is lost; prefetch is one, so a busy
worker holds no queued job another could run. Redis orders by priority
steps (0 first), RabbitMQ by ``x-max-priority`` (9 first); rules' urgent,
normal and batch map onto both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from node.config import QueueConfig

__all__ = ["TASK_NAME", "QUEUE_NAME", "broker_priority", "make_app"]

TASK_NAME = "segnode.run_job"
QUEUE_NAME = "segnode"
#: Redis's priority steps: 0 is served first.
_REDIS_PRIORITY = {2: 0, 1: 5, 0: 9}
#: RabbitMQ: the highest number is served first.
_AMQP_PRIORITY = {2: 9, 1: 5, 0: 0}


def _is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


def broker_priority(broker_url: str, priority: int) -> int:
    """The message priority of a job of ``priority`` (catalogue: 2 urgent .. 0 batch)."""
    table = _REDIS_PRIORITY if _is_redis(broker_url) else _AMQP_PRIORITY
    return table[max(0, min(2, priority))]


def make_app(queue: QueueConfig, run_job: Callable[[int], Any] | None = None) -> Celery:
    """The Celery app on ``queue.broker_url``; with ``run_job`` it also runs the task.

    Publishers need no ``run_job``: they send the task by name.
    """
    assert queue.broker_url is not None
    app = Celery("segnode", broker=queue.broker_url, set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": 3600, "max_retries": 1,
                                 "interval_start": 0, "interval_step": 0.5,
                                 "interval_max": 0.5}
    if _is_redis(queue.broker_url):
        transport.update(priority_steps=list(range(10)), sep=":",
                         queue_order_strategy="priority")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=QUEUE_NAME,
        task_queue_max_priority=10,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4.0,
        broker_transport_options=transport,
    )
    if run_job is not None:
        @app.task(name=TASK_NAME)
        def _run_job(job_id: int) -> None:
            run_job(int(job_id))

    return app
