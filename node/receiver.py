"""What happens to one received instance: spool, catalogue, or quarantine.

Called by the C-STORE handler of :mod:`node.listener` on the association's
thread. It never decodes pixels: it reads the few header attributes the
catalogue and the rules need, writes the received bytes durably and records
them, then returns the DIMSE status.

Duplicates: a SOP Instance UID received again with the same bytes changes
nothing (status Success); with other bytes the newer copy replaces the older
file and row, and counts as a new arrival for its series (a completed series
is processed again when ``timing.reprocess_late_instances`` is on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from node.catalogue import Catalogue, InstanceRecord
from node.config import LimitsConfig
from node.spool import Quarantine, Spool, check_uid
from segnode_errors import InputRejected

__all__ = ["Receiver", "StoreStatus"]

logger = logging.getLogger(__name__)


class StoreStatus:
    """The C-STORE statuses segnode answers with (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC210


@dataclass
class Receiver:
    """Takes in instances for one node.

    Parameters
    ----------
    spool, quarantine, catalogue
        Where instances, unreadable files and their rows go.
    reprocess_late_instances
        Whether an instance arriving in a completed series reopens it.
    limits
        Largest instance and most frames taken in (``limits`` of the config).
    """

    spool: Spool
    quarantine: Quarantine
    catalogue: Catalogue
    reprocess_late_instances: bool = True
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: Series already taken in (their instances skip the series-per-study check).
    _known_series: set[str] = field(default_factory=set, init=False, repr=False)

    def receive(self, data: bytes, parse: Callable[[], Dataset], calling_ae: str) -> int:
        """Store one instance (``data`` as received, ``parse`` decodes its header).

        Returns Success only once the file is fsynced and its row committed;
        Out of Resources when either fails (the sender retries); Cannot
        Understand, after quarantining the bytes, when the data set cannot be
        parsed or lacks valid UIDs.
        """
        size_mb = len(data) / 2**20
        if size_mb > self.limits.max_instance_mb:
            return self._quarantine(data, f"instance of {size_mb:.0f} MiB is larger than "
                                    f"limits.max_instance_mb ({self.limits.max_instance_mb:g})",
                                    calling_ae)
        try:
            dataset = parse()
            record_fields = _identify(dataset)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's data
            return self._quarantine(data, f"not a readable DICOM instance: {_reason(exc)}",
                                    calling_ae)
        frames = _frames(dataset)
        if frames > self.limits.max_frames:
            return self._quarantine(data, f"NumberOfFrames {frames} is more than "
                                    f"limits.max_frames ({self.limits.max_frames})", calling_ae)
        try:
            refusal = self._over_series_limit(record_fields["study_uid"],
                                              record_fields["series_uid"])
        except Exception as exc:  # noqa: BLE001 - the database: the sender must retry
            logger.error("instance %s not checked (%s): answering Out of Resources",
                         record_fields["sop_instance_uid"], _reason(exc))
            return StoreStatus.OUT_OF_RESOURCES
        if refusal:
            return self._quarantine(data, refusal, calling_ae)
        try:
            with self.spool.series_guard(record_fields["series_uid"]).writing():
                path, digest = self.spool.store(data, record_fields["study_uid"],
                                                record_fields["series_uid"],
                                                record_fields["sop_instance_uid"])
                outcome = self.catalogue.record_instance(
                    InstanceRecord(path=path, size_bytes=len(data), sha256=digest,
                                   calling_ae=calling_ae, **record_fields),
                    reopen_complete=self.reprocess_late_instances,
                )
        except Exception as exc:  # noqa: BLE001 - disk or database: the sender must retry
            logger.error("instance %s not stored (%s): answering Out of Resources",
                         record_fields["sop_instance_uid"], _reason(exc))
            return StoreStatus.OUT_OF_RESOURCES
        if outcome.old_path is not None:
            outcome.old_path.unlink(missing_ok=True)
        if outcome.kind == "replaced":
            logger.info("instance %s replaced an earlier copy", record_fields["sop_instance_uid"])
        if outcome.reopened:
            logger.info("series %s reopened by a late instance", record_fields["series_uid"])
        return StoreStatus.SUCCESS

    def _over_series_limit(self, study_uid: str, series_uid: str) -> str:
        """The reason to refuse the first instance of one series too many in its study, or ""."""
        if series_uid in self._known_series:
            return ""
        known = self.catalogue.series_in_study(study_uid)
        limit = self.limits.max_series_per_study
        if series_uid not in known and len(known) >= limit:
            return (f"study already has {len(known)} series, limits.max_series_per_study is "
                    f"{limit}")
        if len(self._known_series) > 100_000:
            self._known_series.clear()
        self._known_series.add(series_uid)
        return ""

    def _quarantine(self, data: bytes, reason: str, calling_ae: str) -> int:
        try:
            path = self.quarantine.put(data, reason)
            entry = self.catalogue.add_quarantine(path, reason, calling_ae)
        except Exception as exc:  # noqa: BLE001
            logger.error("could not quarantine a file from %s (%s)", calling_ae, _reason(exc))
            return StoreStatus.OUT_OF_RESOURCES
        logger.warning("file from %s quarantined as #%d (%s): %s", calling_ae, entry, path.name,
                       reason)
        return StoreStatus.CANNOT_UNDERSTAND


def _identify(ds: Dataset) -> dict[str, str]:
    """The catalogue fields of a data set; raises when a UID is missing or invalid."""
    if not isinstance(ds, Dataset):
        raise InputRejected("no data set")
    image_type = ds.get("ImageType", "")
    if not isinstance(image_type, str):
        image_type = "\\".join(str(part) for part in image_type)
    return {
        "sop_instance_uid": check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
        "series_uid": check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        "study_uid": check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        "sop_class_uid": check_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        "modality": str(ds.get("Modality", ""))[:16],
        "description": str(ds.get("SeriesDescription", "")),
        "body_part": str(ds.get("BodyPartExamined", ""))[:64],
        "image_type": image_type.upper(),
        "manufacturer": str(ds.get("Manufacturer", "")),
    }


def _frames(ds: Dataset) -> int:
    """NumberOfFrames as declared (1 when absent or not a number)."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
