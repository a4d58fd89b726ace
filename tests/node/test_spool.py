"""The spool and the quarantine: UID checks, durable writes, nothing half-written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.spool import Quarantine, SeriesGuard, Spool, check_uid
from segnode_errors import InputRejected
from tests.node.fakes import SERIES, STUDY

SOP = "1.2.826.0.1.3680043.8.498.1.1.7"


@pytest.mark.parametrize("value, message", [
    ("", "SOPInstanceUID is missing."),
    (None, "SOPInstanceUID is missing."),
    ("   ", "SOPInstanceUID is missing."),
    ("1.2.abc", "SOPInstanceUID '1.2.abc' is not a valid UID."),
    ("1.2." + "3" * 61, "is not a valid UID."),  # 65 characters
    ("../1.2.3", "SOPInstanceUID '../1.2.3' is not a valid UID."),
    ("1.2/../../etc", "is not a valid UID."),
    ("1..2", "is not a valid UID."),
    ("1.2.3.", "is not a valid UID."),
    ("1.2\\3.4", "is not a valid UID."),
])
def test_check_uid_refuses_with_the_keyword(value: object, message: str) -> None:
    with pytest.raises(InputRejected) as caught:
        check_uid(value, "SOPInstanceUID")
    assert message in str(caught.value) and "SOPInstanceUID" in str(caught.value)


def test_check_uid_accepts_padded_and_maximal_uids() -> None:
    assert check_uid("1.2.840.10008.1.2\x00", "TransferSyntaxUID") == "1.2.840.10008.1.2"
    assert check_uid(" 1.2.3 ", "StudyInstanceUID") == "1.2.3"
    longest = "1.2." + "3" * 60
    assert len(longest) == 64 and check_uid(longest, "SeriesInstanceUID") == longest


def test_store_writes_exactly_the_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 40
    path, digest = spool.store(data, STUDY, SERIES, SOP)
    assert path == tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert list(spool.tmp.iterdir()) == []
    again, digest2 = spool.store(b"other", STUDY, SERIES, SOP)  # a replacement overwrites
    assert again == path and path.read_bytes() == b"other"
    assert digest2 == hashlib.sha256(b"other").hexdigest()


def test_store_refuses_bad_uids_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InputRejected, match="SeriesInstanceUID"):
        spool.store(b"data", STUDY, "../../etc", SOP)
    assert [p for p in spool.root.rglob("*") if p.is_file()] == []


def test_failed_rename_leaves_no_part_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    target = spool.path_for(STUDY, SERIES, SOP)
    (target / "occupied").mkdir(parents=True)  # a non-empty folder where the file goes
    with pytest.raises(OSError):
        spool.store(b"data", STUDY, SERIES, SOP)
    assert list(spool.tmp.iterdir()) == []
    assert target.is_dir()


def test_failed_folder_creation_leaves_no_part_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.root / STUDY).mkdir()
    (spool.root / STUDY / SERIES).write_bytes(b"a file, not a folder")
    with pytest.raises(OSError):
        spool.store(b"data", STUDY, SERIES, SOP)
    assert list(spool.tmp.iterdir()) == []


def test_leftover_part_files_are_removed_at_start(tmp_path: Path) -> None:
    tmp = tmp_path / "spool" / ".tmp"
    tmp.mkdir(parents=True)
    (tmp / "abc123.part").write_bytes(b"half")
    (tmp / "def456.part").write_bytes(b"written")
    kept = tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"complete")
    Spool(tmp_path / "spool")
    assert list(tmp.iterdir()) == []
    assert kept.read_bytes() == b"complete"


def test_prune_empty_keeps_the_study_while_it_has_other_series(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first, _ = spool.store(b"a", STUDY, SERIES, SOP)
    second, _ = spool.store(b"b", STUDY, "1.2.3.4", SOP)
    first.unlink()
    spool.prune_empty([first])
    assert not first.parent.exists() and second.exists()
    second.unlink()
    spool.prune_empty([second])
    assert not (spool.root / STUDY).exists() and spool.root.is_dir()


def test_quarantine_keeps_the_bytes_and_the_reason(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    first = quarantine.put(b"garbage", "cannot be parsed: no preamble")
    second = quarantine.put(b"more garbage", "SOPInstanceUID is missing.")
    assert first != second and first.parent.parent == tmp_path / "quarantine"
    assert first.read_bytes() == b"garbage"
    assert first.with_suffix(".txt").read_text() == "cannot be parsed: no preamble\n"
    assert second.with_suffix(".txt").read_text() == "SOPInstanceUID is missing.\n"
    assert list(quarantine.tmp.iterdir()) == []


def test_series_guard_lets_writers_share_and_makes_a_purge_wait_for_them() -> None:
    import threading

    guard = SeriesGuard()
    events: list[str] = []
    with guard.writing():
        with guard.writing():  # a second writer does not wait for the first
            events.append("two writers")
        purge_done = threading.Event()

        def purge() -> None:
            with guard.purging():
                events.append("purge")
            purge_done.set()

        purger = threading.Thread(target=purge)
        purger.start()
        assert not purge_done.wait(0.2)  # blocked while a write is in flight
        events.append("write done")
    assert purge_done.wait(5)
    purger.join()
    assert events == ["two writers", "write done", "purge"]
