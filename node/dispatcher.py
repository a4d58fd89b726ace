"""The dispatcher: sends due outbox rows to their destinations by C-STORE.

One association per destination and round carries every due file for it;
each instance's status is checked. A transient failure reschedules the
delivery with backoff (see :meth:`node.outbox.Outbox.failed_transient`); a
permanent one fails it at once. When the association itself fails, every
file of that round gets the same outcome.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import pydicom

from node.config import NodeConfig
from node.metrics import NodeMetrics
from node.outbox import Delivery, Outbox
from node.scu import SendFailure, associate, status_failure
from segnode_errors import ConfigError

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)


class Dispatcher:
    """Delivers outputs to the configured destinations.

    Parameters
    ----------
    config
        The node configuration (destinations, the node's own AE title, timeouts).
    outbox
        The deliveries to work through.
    """

    def __init__(self, config: NodeConfig, outbox: Outbox,
                 metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = metrics

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.deliveries.labels(result).inc()

    def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were delivered."""
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.outbox.due():
            by_destination[delivery.destination].append(delivery)
        return sum(self._send_all(name, items) for name, items in by_destination.items())

    def _send_all(self, name: str, deliveries: Sequence[Delivery]) -> int:
        try:
            dest = self.config.destination(name)
        except ConfigError as exc:
            for delivery in deliveries:
                self.outbox.failed_permanent(delivery, str(exc))
            return 0
        loaded: list[tuple[Delivery, pydicom.Dataset]] = []
        for delivery in deliveries:
            try:
                loaded.append((delivery, pydicom.dcmread(delivery.path)))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self.outbox.failed_permanent(delivery, f"output file unreadable: {exc}")
        if not loaded:
            return 0
        contexts = sorted({(str(ds.SOPClassUID), (str(ds.file_meta.TransferSyntaxUID),))
                           for _, ds in loaded})
        sent = processed = 0
        try:
            with associate(dest, self.config.node, contexts) as assoc:
                for delivery, dataset in loaded:
                    if not assoc.is_established:
                        raise SendFailure(f"{name}: association lost", True)
                    sent += self._send_one(assoc, delivery, dataset)
                    processed += 1
        except SendFailure as exc:
            for delivery, _ in loaded[processed:]:
                self._record_failure(delivery, exc)
        return sent

    def _send_one(self, assoc: object, delivery: Delivery, dataset: pydicom.Dataset) -> int:
        what = f"{delivery.destination}: C-STORE of {delivery.sop_instance_uid}"
        accepted = [cx for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
                    if cx.abstract_syntax == dataset.SOPClassUID]
        if not accepted:
            self._record_failure(delivery, SendFailure(
                f"{what}: the destination does not accept SOP class {dataset.SOPClassUID}",
                False))
            return 0
        status = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
        failure = status_failure(status, what)
        if failure is not None:
            self._record_failure(delivery, failure)
            return 0
        self.outbox.delivered(delivery.id)
        self._count("delivered")
        logger.info("delivered %s to %s (job %d)", delivery.sop_instance_uid,
                    delivery.destination, delivery.job_id)
        return 1

    def _record_failure(self, delivery: Delivery, failure: SendFailure) -> None:
        if failure.transient:
            state = self.outbox.failed_transient(delivery, str(failure))
            self._count("retrying" if state == "pending" else "failed")
            logger.warning("delivery %d: %s (%s)", delivery.id, failure,
                           "will retry" if state == "pending" else "gave up")
        else:
            self.outbox.failed_permanent(delivery, str(failure))
            self._count("failed")
            logger.error("delivery %d failed: %s", delivery.id, failure)
