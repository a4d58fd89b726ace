"""Retention: a delivered series is purged after ``retention_days``, anything else is kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.assembler import Assembler
from node.catalogue import Catalogue, InstanceRecord
from node.config import (
    DestinationConfig,
    NodeConfig,
    RuleConfig,
    StorageConfig,
    TimingConfig,
)
from node.jobqueue import SqlJobQueue
from node.outbox import Outbox
from node.retention import Retention
from node.spool import Spool
from tests.node.fakes import MR_IMAGE, SERIES, STUDY, FakeClock, new_catalogue

DAY = 86400.0
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.1.2"


@dataclass
class World:
    """A catalogue, spool, queue and outbox sharing one fake clock."""

    clock: FakeClock
    catalogue: Catalogue
    spool: Spool
    queue: SqlJobQueue
    outbox: Outbox
    config: NodeConfig
    outputs: Path

    def __post_init__(self) -> None:
        # Made with the world: quiet time counts from the assembler's start.
        self.assembler = Assembler(self.config, self.catalogue, self.queue, monotonic=self.clock)

    def receive(self, sop: str, series: str = SERIES) -> Path:
        """Store a real spool file and catalogue it, as the receiver does."""
        data = f"instance {sop}".encode()
        path, digest = self.spool.store(data, STUDY, series, sop)
        self.catalogue.record_instance(InstanceRecord(
            sop_instance_uid=sop, series_uid=series, study_uid=STUDY, sop_class_uid=MR_IMAGE,
            path=path, size_bytes=len(data), sha256=digest, calling_ae="STORESCU",
            modality="MR", image_type="ORIGINAL\\PRIMARY"), reopen_complete=True)
        return path

    def process(self, series: str = SERIES, *, job_fails: bool = False) -> int:
        """Let the series go quiet, run its job (writing outputs) and queue its deliveries."""
        self.clock.advance(self.config.timing.series_quiet_s + 1)
        assert self.assembler.run_once() == 1
        job = self.queue.claim()
        assert job is not None and job.series_uid == series
        folder = self.outputs / f"job-{job.id}"
        (folder / series).mkdir(parents=True)
        for name in ("seg.dcm", "sr.dcm"):
            (folder / series / name).write_bytes(b"result")
        self.queue.set_output_dir(job.id, str(folder))
        if job_fails:
            self.queue.fail(job.id, "engine crashed")
            return job.id
        self.queue.complete(job.id, {"files": 2})
        for name in ("seg.dcm", "sr.dcm"):
            self.outbox.add(job.id, "pacs", folder / series / name, f"2.25.{job.id}{len(name)}")
        return job.id

    def deliver_all(self) -> None:
        for delivery in self.outbox.due():
            self.outbox.delivered(delivery.id)


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    clock = FakeClock()
    catalogue = new_catalogue(tmp_path, clock)
    config = NodeConfig(
        destinations=(DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1",
                                        port=104),),
        rules=(RuleConfig(name="all", destinations=("pacs",), whole_study=False),),
        timing=TimingConfig(series_quiet_s=30),
        storage=StorageConfig(spool_dir=tmp_path / "spool", retention_days=2),
    )
    yield World(clock, catalogue, Spool(tmp_path / "spool"), SqlJobQueue(catalogue),
                Outbox(catalogue, config.timing.retry), config, tmp_path / "outputs")
    catalogue.close()


def _retention(world: World) -> Retention:
    return Retention(world.config, world.catalogue, world.spool)


def test_delivered_series_is_purged_after_retention(world: World) -> None:
    files = [world.receive(sop) for sop in ("1.1", "1.2")]
    job_id = world.process()
    world.deliver_all()
    output = Path(world.queue.get(job_id).output_dir)
    world.clock.advance(2 * DAY - 60)
    assert _retention(world).run_once() == 0  # not yet
    assert all(path.exists() for path in files) and output.is_dir()
    world.clock.advance(120)
    assert _retention(world).run_once() == 1
    assert not any(path.exists() for path in files)
    assert not (world.spool.root / STUDY).exists()  # the emptied study folder too
    assert not output.exists()
    assert world.catalogue.instance_count() == 0 and world.catalogue.get_series(SERIES) is None
    assert _retention(world).run_once() == 0


def test_purging_one_series_keeps_the_others_of_the_study(world: World) -> None:
    world.receive("1.1")
    world.process()
    world.deliver_all()
    world.clock.advance(DAY)
    kept = world.receive("2.1", series=OTHER_SERIES)  # a younger series, not yet processed
    world.clock.advance(1.5 * DAY)
    assert _retention(world).run_once() == 1
    assert kept.exists() and world.catalogue.instance_count(OTHER_SERIES) == 1
    assert world.catalogue.get_series(SERIES) is None


def _pending_delivery(world: World) -> None:
    world.process()


def _failed_delivery(world: World) -> None:
    world.process()
    first, second = world.outbox.due()
    world.outbox.delivered(first.id)
    world.outbox.failed_permanent(second, "rejected")


def _failed_job(world: World) -> None:
    world.process(job_fails=True)


def _still_receiving(world: World) -> None:
    world.process()
    world.deliver_all()
    world.receive("1.9")  # a late instance reopens the series


def _never_complete(world: World) -> None:
    pass


@pytest.mark.parametrize("setup", [_pending_delivery, _failed_delivery, _failed_job,
                                   _still_receiving, _never_complete],
                         ids=["pending delivery", "failed delivery", "failed job",
                              "still receiving", "never complete"])
def test_anything_unfinished_is_kept_however_old(world: World,
                                                 setup: Callable[[World], None]) -> None:
    files = [world.receive(sop) for sop in ("1.1", "1.2")]
    setup(world)
    world.clock.advance(30 * DAY)
    assert _retention(world).run_once() == 0
    assert all(path.exists() for path in files)
    assert world.catalogue.get_series(SERIES) is not None
    assert world.catalogue.instance_count(SERIES) >= 2


def test_retention_counts_from_the_end_of_the_job(world: World) -> None:
    """A series that waited days in the queue is kept for retention_days after its job."""
    world.receive("1.1")
    world.clock.advance(31)
    assert world.assembler.run_once() == 1
    world.clock.advance(5 * DAY)  # a long queue
    job = world.queue.claim()
    world.queue.complete(job.id, {})
    world.clock.advance(DAY)
    assert _retention(world).run_once() == 0
    assert world.catalogue.get_series(SERIES) is not None
    world.clock.advance(1.5 * DAY)
    assert _retention(world).run_once() == 1


class _ArrivalDuringPurge(Retention):
    """Retention with an instance arriving between its scan and its deletes.

    The listener thread may store an instance at any moment; this places one
    deterministically in the window between :meth:`expired` and the purge.
    """

    def __init__(self, world: World) -> None:
        super().__init__(world.config, world.catalogue, world.spool)
        self.world = world
        self.late: Path | None = None

    def expired(self) -> list[tuple[str, str, list[str]]]:
        found = super().expired()
        self.late = self.world.receive("1.7")
        return found


def test_instance_arriving_during_the_purge_is_not_lost(world: World) -> None:
    world.receive("1.1")
    world.process()
    world.deliver_all()
    world.clock.advance(3 * DAY)
    retention = _ArrivalDuringPurge(world)
    retention.run_once()
    assert retention.late is not None
    # The sender was answered Success for 1.7: its file and row must survive.
    assert retention.late.exists()
    assert retention.late in world.catalogue.series_paths(SERIES)
    row = world.catalogue.get_series(SERIES)
    assert row is not None and row["state"] == "receiving"
