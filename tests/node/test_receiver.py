"""The receiver: one instance to the spool and catalogue, to the quarantine, or refused."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.catalogue import Catalogue
from node.receiver import Receiver, StoreStatus
from node.spool import Quarantine, Spool
from tests.node.fakes import SERIES, STUDY, FakeClock, encode, make_dataset, new_catalogue

SOP = "1.2.826.0.1.3680043.8.498.1.1.7"


def _parse(data: bytes) -> Callable[[], Dataset]:
    """What the listener passes: decoding the received bytes on demand."""
    return lambda: dcmread(io.BytesIO(data))


@pytest.fixture()
def parts(tmp_path: Path) -> Iterator[tuple[Spool, Quarantine, Catalogue]]:
    catalogue = new_catalogue(tmp_path / "db", FakeClock())
    yield Spool(tmp_path / "spool"), Quarantine(tmp_path / "quarantine"), catalogue
    catalogue.close()


def _receiver(parts: tuple[Spool, Quarantine, Catalogue]) -> Receiver:
    return Receiver(*parts, reprocess_late_instances=True)


def _quarantined(quarantine: Quarantine) -> list[Path]:
    return sorted(quarantine.root.glob("*/*.dcm"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case ImageType on purpose
def test_valid_instance_is_spooled_and_catalogued(
    parts: tuple[Spool, Quarantine, Catalogue],
) -> None:
    spool, quarantine, catalogue = parts
    data = encode(make_dataset(SOP, BodyPartExamined="ABDOMEN", ImageType=["original",
                                                                         "primary"]))
    assert _receiver(parts).receive(data, _parse(data), "STORESCU") == StoreStatus.SUCCESS
    assert spool.path_for(STUDY, SERIES, SOP).read_bytes() == data
    assert catalogue.series_paths(SERIES) == [spool.path_for(STUDY, SERIES, SOP)]
    row = catalogue.get_series(SERIES)
    assert (row["modality"], row["description"], row["body_part"], row["image_type"],
            row["manufacturer"]) == ("MR", "t1 vibe", "ABDOMEN", "ORIGINAL\\PRIMARY", "ACME")
    assert _quarantined(quarantine) == []


def test_resend_and_replacement(parts: tuple[Spool, Quarantine, Catalogue]) -> None:
    spool, _, catalogue = parts
    receiver = _receiver(parts)
    data = encode(make_dataset(SOP))
    assert receiver.receive(data, _parse(data), "STORESCU") == StoreStatus.SUCCESS
    assert receiver.receive(data, _parse(data), "STORESCU") == StoreStatus.SUCCESS
    assert catalogue.instance_count() == 1
    moved = encode(make_dataset(SOP, series="1.2.3.4"))  # same SOP UID, other series
    assert receiver.receive(moved, _parse(moved), "STORESCU") == StoreStatus.SUCCESS
    assert not spool.path_for(STUDY, SERIES, SOP).exists()  # the older copy is gone
    assert spool.path_for(STUDY, "1.2.3.4", SOP).read_bytes() == moved
    assert catalogue.instance_count() == catalogue.instance_count("1.2.3.4") == 1


def test_unparsable_data_is_quarantined_with_the_reason(
    parts: tuple[Spool, Quarantine, Catalogue],
) -> None:
    spool, quarantine, catalogue = parts
    data = b"this is not a DICOM data set"
    status = _receiver(parts).receive(data, _parse(data), "MODALITY1")
    assert status == StoreStatus.CANNOT_UNDERSTAND == 0xC210
    [kept] = _quarantined(quarantine)
    assert kept.read_bytes() == data
    with pytest.raises(InvalidDicomError) as parse_error:
        _parse(data)()
    reason = kept.with_suffix(".txt").read_text()
    assert str(parse_error.value) in reason  # the parser's own words, for the administrator
    [entry] = catalogue.list_quarantine()
    assert (Path(entry["path"]), entry["calling_ae"]) == (kept, "MODALITY1")
    assert entry["reason"] == reason.strip()
    assert catalogue.instance_count() == 0
    assert [p for p in spool.root.rglob("*") if p.is_file()] == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("keyword, value", [
    ("SeriesInstanceUID", "1.2.840.abc"),
    ("SeriesInstanceUID", "../../etc"),
    ("StudyInstanceUID", ""),
])
def test_invalid_uid_is_quarantined_naming_the_attribute(
    parts: tuple[Spool, Quarantine, Catalogue], keyword: str, value: str,
) -> None:
    spool, quarantine, catalogue = parts
    ds = make_dataset(SOP)
    setattr(ds, keyword, value)
    data = encode(ds)
    assert _receiver(parts).receive(data, _parse(data), "STORESCU") == 0xC210
    [kept] = _quarantined(quarantine)
    assert keyword in kept.with_suffix(".txt").read_text()
    assert keyword in catalogue.list_quarantine()[0]["reason"]
    assert catalogue.instance_count() == 0 and not (spool.root / STUDY).exists()


def test_catalogue_failure_answers_out_of_resources(tmp_path: Path) -> None:
    """The database file becomes a folder: every write fails, and the sender must retry."""
    db_dir = tmp_path / "db"
    catalogue = new_catalogue(db_dir, FakeClock())
    catalogue.close()
    shutil.rmtree(db_dir)
    (db_dir / "c.db").mkdir(parents=True)
    with pytest.raises(sa.exc.OperationalError):
        catalogue.instance_count()  # the failure is real
    quarantine = Quarantine(tmp_path / "quarantine")
    receiver = Receiver(Spool(tmp_path / "spool"), quarantine, catalogue)
    data = encode(make_dataset(SOP))
    assert receiver.receive(data, _parse(data), "STORESCU") == StoreStatus.OUT_OF_RESOURCES
    assert StoreStatus.OUT_OF_RESOURCES == 0xA700
    # Unparsable data cannot be recorded in the quarantine table either.
    assert receiver.receive(b"junk", _parse(b"junk"), "STORESCU") == 0xA700
    catalogue.close()


def test_spool_failure_answers_out_of_resources(
    parts: tuple[Spool, Quarantine, Catalogue],
) -> None:
    spool, _, catalogue = parts
    (spool.root / STUDY).write_bytes(b"a file where the study folder goes")
    data = encode(make_dataset(SOP))
    assert _receiver(parts).receive(data, _parse(data), "STORESCU") == 0xA700
    assert catalogue.instance_count() == 0 and list(spool.tmp.iterdir()) == []


def test_quarantine_failure_answers_out_of_resources(
    parts: tuple[Spool, Quarantine, Catalogue],
) -> None:
    _, quarantine, catalogue = parts
    shutil.rmtree(quarantine.tmp)
    quarantine.tmp.write_bytes(b"a file where the temporary folder goes")
    assert _receiver(parts).receive(b"junk", _parse(b"junk"), "STORESCU") == 0xA700
    assert catalogue.list_quarantine() == []


def test_one_series_too_many_in_a_study_is_quarantined_and_known_series_still_stored(
    parts: tuple[Spool, Quarantine, Catalogue],
) -> None:
    from node.config import LimitsConfig

    spool, quarantine, catalogue = parts
    receiver = Receiver(*parts, limits=LimitsConfig(max_series_per_study=2))
    for n, series in enumerate(["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.1", "1.2.3.2"]):
        data = encode(make_dataset(f"{SOP}.{n}", series=series))
        expected = StoreStatus.CANNOT_UNDERSTAND if series == "1.2.3.3" else StoreStatus.SUCCESS
        assert receiver.receive(data, _parse(data), "STORESCU") == expected
    assert catalogue.instance_count() == 4
    [entry] = catalogue.list_quarantine()
    assert "study already has 2 series, limits.max_series_per_study is 2" in entry["reason"]
    other = encode(make_dataset(f"{SOP}.9", series="1.2.3.3", study="1.2.9"))
    assert receiver.receive(other, _parse(other), "STORESCU") == StoreStatus.SUCCESS


@pytest.mark.parametrize("limits, attrs, key", [
    ({"max_instance_mb": 0.001}, {}, "limits.max_instance_mb"),  # about 1 kB
    ({"max_frames": 100}, {"NumberOfFrames": 1_000_000}, "limits.max_frames"),
], ids=["too large", "too many frames"])
def test_an_instance_beyond_a_limit_is_quarantined_and_the_next_one_stored(
    parts: tuple[Spool, Quarantine, Catalogue], limits: dict, attrs: dict, key: str,
) -> None:
    from node.config import LimitsConfig

    spool, quarantine, catalogue = parts
    receiver = Receiver(*parts, limits=LimitsConfig(**limits))
    big = make_dataset(SOP, **attrs)
    big.ImageComments = "x" * 2000
    data = encode(big)
    assert receiver.receive(data, _parse(data), "STORESCU") == StoreStatus.CANNOT_UNDERSTAND
    [kept] = _quarantined(quarantine)
    assert kept.read_bytes() == data  # nothing received is lost
    assert key in catalogue.list_quarantine()[0]["reason"]
    assert catalogue.instance_count() == 0
    small = encode(make_dataset(SOP + ".2"))
    assert receiver.receive(small, _parse(small), "STORESCU") == StoreStatus.SUCCESS
    assert catalogue.instance_count() == 1
