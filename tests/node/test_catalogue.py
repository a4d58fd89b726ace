"""The catalogue (instances and series) and the assembler, on a real SQLite file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from node.assembler import Assembler
from node.catalogue import Catalogue, instances
from node.config import DestinationConfig, NodeConfig, RuleConfig, RuleMatch, TimingConfig
from node.jobqueue import SqlJobQueue
from tests.node.fakes import SERIES, STUDY, FakeClock, new_catalogue, record

OTHER_SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
MR_ATTRS = {"modality": "MR", "description": "t1_vibe", "body_part": "ABDOMEN",
            "image_type": "ORIGINAL\\PRIMARY\\M", "manufacturer": "SIEMENS"}


@pytest.fixture()
def catalogue(database_url: str, clock: FakeClock) -> Iterator[Catalogue]:
    cat = Catalogue(database_url, clock=clock)
    yield cat
    cat.close()


def _complete(catalogue: Catalogue, series_uid: str = SERIES, decision: str = "done") -> bool:
    [row] = [r for r in catalogue.receiving_series() if r.series_uid == series_uid]
    with catalogue.begin() as db:
        return catalogue.complete_series(db, series_uid, decision,
                                         last_received_at=row.last_received_at)


def _instance_row(catalogue: Catalogue, sop: str) -> sa.Row:
    with catalogue.engine.connect() as db:
        return db.execute(sa.select(instances).where(
            instances.c.sop_instance_uid == sop)).one()


# record_instance -----------------------------------------------------------------------------


def test_new_instance_creates_its_series(catalogue: Catalogue, clock: FakeClock) -> None:
    outcome = catalogue.record_instance(record("1.1", **MR_ATTRS), reopen_complete=True)
    assert (outcome.kind, outcome.old_path, outcome.reopened) == ("new", None, False)
    row = catalogue.get_series(SERIES)
    assert row is not None
    assert (row["state"], row["modality"], row["description"], row["image_type"]) == (
        "receiving", "MR", "t1_vibe", "ORIGINAL\\PRIMARY\\M")
    assert row["first_received_at"] == row["last_received_at"] == clock.now
    assert catalogue.instance_count() == catalogue.instance_count(SERIES) == 1


def test_identical_resend_changes_nothing(catalogue: Catalogue, clock: FakeClock) -> None:
    catalogue.record_instance(record("1.1"), reopen_complete=True)
    first = clock.now
    clock.advance(100)
    outcome = catalogue.record_instance(record("1.1"), reopen_complete=True)
    assert (outcome.kind, outcome.old_path, outcome.reopened) == ("identical", None, False)
    assert catalogue.get_series(SERIES)["last_received_at"] == first
    assert _instance_row(catalogue, "1.1").received_at == first
    assert catalogue.instance_count() == 1


def test_other_content_replaces_in_place(catalogue: Catalogue, clock: FakeClock) -> None:
    catalogue.record_instance(record("1.1", sha="a" * 64), reopen_complete=True)
    now = clock.advance(100)
    outcome = catalogue.record_instance(record("1.1", sha="b" * 64), reopen_complete=True)
    assert (outcome.kind, outcome.old_path) == ("replaced", None)  # same spool path
    assert _instance_row(catalogue, "1.1").sha256 == "b" * 64
    assert catalogue.get_series(SERIES)["last_received_at"] == now  # counts as an arrival
    assert catalogue.instance_count() == 1


def test_replacement_at_another_path_returns_the_old_path(catalogue: Catalogue) -> None:
    old = record("1.1", sha="a" * 64)
    catalogue.record_instance(old, reopen_complete=True)
    moved = record("1.1", series=OTHER_SERIES, sha="b" * 64)
    outcome = catalogue.record_instance(moved, reopen_complete=True)
    assert outcome.kind == "replaced" and outcome.old_path == old.path
    assert _instance_row(catalogue, "1.1").path == str(moved.path)
    assert catalogue.instance_count(SERIES) == 0 and catalogue.instance_count(OTHER_SERIES) == 1


def test_late_instance_reopens_only_when_asked(catalogue: Catalogue, clock: FakeClock) -> None:
    catalogue.record_instance(record("1.1"), reopen_complete=True)
    assert _complete(catalogue, decision="rule mr")
    clock.advance(60)
    kept = catalogue.record_instance(record("1.2"), reopen_complete=False)
    assert (kept.kind, kept.reopened) == ("new", False)
    row = catalogue.get_series(SERIES)
    assert (row["state"], row["decision"]) == ("complete", "rule mr")
    assert catalogue.instance_count(SERIES) == 2
    reopened = catalogue.record_instance(record("1.3"), reopen_complete=True)
    assert reopened.reopened
    row = catalogue.get_series(SERIES)
    assert (row["state"], row["decision"], row["last_received_at"]) == (
        "receiving", "", clock.now)


def test_replaced_instance_reopens_a_complete_series(catalogue: Catalogue) -> None:
    catalogue.record_instance(record("1.1", sha="a" * 64), reopen_complete=True)
    assert _complete(catalogue)
    identical = catalogue.record_instance(record("1.1", sha="a" * 64), reopen_complete=True)
    assert not identical.reopened and catalogue.get_series(SERIES)["state"] == "complete"
    replaced = catalogue.record_instance(record("1.1", sha="c" * 64), reopen_complete=True)
    assert replaced.reopened and catalogue.get_series(SERIES)["state"] == "receiving"


def test_concurrent_writers_do_not_lock_each_other_out(catalogue: Catalogue) -> None:
    """4 threads x 100 instances into two shared series: every row lands, no lock error."""
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def store(thread: int) -> None:
        start.wait()
        try:
            for n in range(100):
                series = SERIES if n % 2 else OTHER_SERIES
                catalogue.record_instance(record(f"1.{thread}.{n}", series=series),
                                          reopen_complete=True)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert catalogue.instance_count() == 400
    assert catalogue.instance_count(SERIES) == catalogue.instance_count(OTHER_SERIES) == 200
    assert catalogue.series_counts() == {"receiving": 2}


def test_receiving_series_lists_open_series_oldest_first(
    catalogue: Catalogue, clock: FakeClock,
) -> None:
    for sop in ("1.1", "1.2", "1.3"):
        catalogue.record_instance(record(sop, **MR_ATTRS), reopen_complete=True)
    clock.advance(10)
    catalogue.record_instance(record("2.1", series=OTHER_SERIES), reopen_complete=True)
    first, second = catalogue.receiving_series()
    assert (first.series_uid, first.study_uid, first.n_instances, first.state) == (
        SERIES, STUDY, 3, "receiving")
    assert first.image_type == ("ORIGINAL", "PRIMARY", "M") and first.body_part == "ABDOMEN"
    assert (second.series_uid, second.last_received_at) == (OTHER_SERIES, clock.now)
    assert _complete(catalogue)
    assert [r.series_uid for r in catalogue.receiving_series()] == [OTHER_SERIES]


# The assembler --------------------------------------------------------------------------------


def _config(quiet_s: float = 30.0, *, whole_study: bool = False) -> NodeConfig:
    dest = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    return NodeConfig(
        destinations=(DestinationConfig(name="pacs", **dest),
                      DestinationConfig(name="archive", **dest)),
        rules=(RuleConfig(name="mr-body", match=RuleMatch(modality=("MR",), min_slices=3),
                          model="mrsegmentator", seg_type="labelmap",
                          destinations=("pacs", "archive"), whole_study=whole_study),),
        timing=TimingConfig(series_quiet_s=quiet_s, study_quiet_s=120),
    )


def _send(catalogue: Catalogue, clock: FakeClock, sops: list[str], series: str = SERIES,
          **attrs: str) -> None:
    for sop in sops:
        catalogue.record_instance(record(sop, series=series, **{**MR_ATTRS, **attrs}),
                                  reopen_complete=True)
        clock.advance(1)


def test_assembler_waits_for_the_quiet_time_then_queues_one_job(
    catalogue: Catalogue, clock: FakeClock,
) -> None:
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(quiet_s=30), catalogue, queue, monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    last = catalogue.get_series(SERIES)["last_received_at"]
    clock.now = last + 30  # exactly the quiet time: not yet quiet
    assert assembler.run_once() == 0
    assert queue.list() == [] and catalogue.get_series(SERIES)["state"] == "receiving"
    clock.now = last + 30.5
    assert assembler.run_once() == 1
    [job] = queue.list()
    assert (job.series_uid, job.rule, job.model, job.seg_type, job.destinations, job.state) == (
        SERIES, "mr-body", "mrsegmentator", "labelmap", ("pacs", "archive"), "queued")
    row = catalogue.get_series(SERIES)
    assert (row["state"], row["decision"], row["job_id"]) == ("complete", "rule mr-body", job.id)
    clock.advance(3600)
    assert assembler.run_once() == 0 and len(queue.list()) == 1


@pytest.mark.parametrize("series_attrs, reason", [
    ({"modality": "SEG", "image_type": "DERIVED\\PRIMARY", "sop_class": SEG},
     "never processed: SOP class 1.2.840.10008.5.1.4.1.1.66.4 is a segmentation"),
    ({"modality": "CT"}, "no rule matched (mr-body: modality CT not in MR)"),
], ids=["excluded", "unmatched"])
def test_unprocessed_series_complete_with_the_reason_and_no_job(
    tmp_path: Path, clock: FakeClock, series_attrs: dict[str, str], reason: str,
) -> None:
    catalogue = new_catalogue(tmp_path, clock)
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(), catalogue, queue, monotonic=clock)
    for sop in ("1.1", "1.2", "1.3"):
        catalogue.record_instance(record(sop, **{**MR_ATTRS, **series_attrs}),
                                  reopen_complete=True)
    clock.advance(31)
    assert assembler.run_once() == 0
    row = catalogue.get_series(SERIES)
    assert row["state"] == "complete" and row["decision"].startswith(reason)
    assert row["job_id"] is None and queue.list() == []
    catalogue.close()


def test_arrival_after_quiet_check_keeps_the_series_receiving(
    catalogue: Catalogue, clock: FakeClock,
) -> None:
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    clock.advance(60)
    [quiet] = catalogue.receiving_series()
    catalogue.record_instance(record("1.4", **MR_ATTRS), reopen_complete=True)  # just now
    with catalogue.begin() as db:
        assert not catalogue.complete_series(db, quiet.series_uid, "rule mr-body",
                                             last_received_at=quiet.last_received_at)
    row = catalogue.get_series(SERIES)
    assert (row["state"], row["decision"]) == ("receiving", "")


@pytest.mark.parametrize("jump_s", [3600.0, -3600.0], ids=["forward", "backward"])
def test_a_wall_clock_jump_neither_hurries_nor_holds_the_quiet_time(
    catalogue: Catalogue, clock: FakeClock, jump_s: float,
) -> None:
    queue = SqlJobQueue(catalogue)
    monotonic = FakeClock(100.0)
    assembler = Assembler(_config(quiet_s=30), catalogue, queue, monotonic=monotonic)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    assert assembler.run_once() == 0  # watched from here
    clock.advance(jump_s)  # NTP steps the wall clock; 10 s pass
    monotonic.advance(10)
    assert assembler.run_once() == 0 and queue.list() == []
    assert catalogue.get_series(SERIES)["state"] == "receiving"
    monotonic.advance(21)  # 31 s of quiet on the monotonic clock
    assert assembler.run_once() == 1
    assert [job.series_uid for job in queue.list()] == [SERIES]


def test_time_the_node_was_down_is_not_quiet_time(catalogue: Catalogue, clock: FakeClock
                                                  ) -> None:
    queue = SqlJobQueue(catalogue)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    clock.advance(600)  # the node was down (killed, restarting) for ten minutes
    assembler = Assembler(_config(quiet_s=30), catalogue, queue, monotonic=clock)
    assert assembler.run_once() == 0  # the sender may resume any moment
    clock.advance(31)
    assert assembler.run_once() == 1


def test_reopened_series_gets_a_new_job_after_the_quiet_time(
    catalogue: Catalogue, clock: FakeClock,
) -> None:
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(), catalogue, queue, monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    clock.advance(31)
    assert assembler.run_once() == 1
    _send(catalogue, clock, ["1.4"])
    assert catalogue.get_series(SERIES)["state"] == "receiving"
    assert assembler.run_once() == 0
    clock.advance(31)
    assert assembler.run_once() == 1
    second, first = queue.list()
    assert second.id > first.id and catalogue.get_series(SERIES)["job_id"] == second.id


# Whole studies (stations) ---------------------------------------------------------------------

STATION_2 = "1.2.826.0.1.3680043.8.498.1.2"
STATION_3 = "1.2.826.0.1.3680043.8.498.1.3"


def test_stations_wait_for_the_study_and_share_one_job(catalogue: Catalogue,
                                                       clock: FakeClock) -> None:
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(whole_study=True), catalogue, queue, monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    _send(catalogue, clock, ["2.1", "2.2", "2.3"], series=STATION_2)
    clock.advance(31)
    assert assembler.run_once() == 0  # both series quiet, the study not yet
    assert {catalogue.get_series(uid)["state"] for uid in (SERIES, STATION_2)} == {"waiting"}
    assert "waiting for the study" in catalogue.get_series(SERIES)["decision"]
    clock.advance(90)
    assert assembler.run_once() == 1
    [job] = queue.list()
    assert job.series_uids == (SERIES, STATION_2) and job.study_uid == STUDY
    for uid in (SERIES, STATION_2):
        row = catalogue.get_series(uid)
        assert (row["state"], row["job_id"]) == ("complete", job.id)
    clock.advance(3600)
    assert assembler.run_once() == 0


def test_a_receiving_series_holds_its_study(catalogue: Catalogue, clock: FakeClock) -> None:
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(whole_study=True), catalogue, queue, monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    clock.advance(31)
    assert assembler.run_once() == 0
    clock.advance(100)
    _send(catalogue, clock, ["2.1"], series=STATION_2)  # a station still arriving
    clock.advance(25)
    assert assembler.run_once() == 0 and queue.list() == []
    _send(catalogue, clock, ["2.2", "2.3"], series=STATION_2)
    clock.advance(121)
    assert assembler.run_once() == 1
    assert queue.list()[0].series_uids == (SERIES, STATION_2)


def test_a_late_station_reruns_the_whole_study(catalogue: Catalogue, clock: FakeClock) -> None:
    queue = SqlJobQueue(catalogue)
    assembler = Assembler(_config(whole_study=True), catalogue, queue, monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    _send(catalogue, clock, ["2.1", "2.2", "2.3"], series=STATION_2)
    clock.advance(121)
    assembler.run_once()
    assembler.run_once()
    _send(catalogue, clock, ["3.1", "3.2", "3.3"], series=STATION_3)
    clock.advance(31)
    assert assembler.run_once() == 0
    clock.advance(90)
    assert assembler.run_once() == 1
    second, first = queue.list()
    assert first.series_uids == (SERIES, STATION_2)
    assert second.series_uids == (SERIES, STATION_2, STATION_3)


def test_a_late_instance_sends_a_waiting_series_back_to_receiving(catalogue: Catalogue,
                                                                  clock: FakeClock) -> None:
    assembler = Assembler(_config(whole_study=True), catalogue, SqlJobQueue(catalogue),
                          monotonic=clock)
    _send(catalogue, clock, ["1.1", "1.2", "1.3"])
    clock.advance(31)
    assembler.run_once()
    assert catalogue.get_series(SERIES)["state"] == "waiting"
    _send(catalogue, clock, ["1.4"])
    assert catalogue.get_series(SERIES)["state"] == "receiving"


def test_worker_processes_are_the_ones_with_a_fresh_heartbeat(catalogue: Catalogue) -> None:
    import json
    import time

    now = time.time()
    catalogue.set_state(**{
        "worker:11@gpu1": json.dumps({"worker": "gpu1/cuda:0", "device": "cuda:0", "job": 4,
                                      "memory": "", "heartbeat_at": now - 1}),
        "worker:12@gpu2": json.dumps({"worker": "gpu2/cuda:0", "device": "cuda:0", "job": None,
                                      "memory": "", "heartbeat_at": now - 120}),
        "worker:13@gpu3": "",  # stopped cleanly
    })
    assert [w["worker"] for w in catalogue.worker_processes(fresh_s=30)] == ["gpu1/cuda:0"]
