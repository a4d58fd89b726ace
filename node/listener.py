"""The DICOM listener: Verification and Storage SCP with access control.

Handlers are plain functions bound through ``evt_handlers`` (pynetdicom's
way). The C-STORE handler passes the encoded data set to
:class:`node.receiver.Receiver` and returns its status; nothing heavier runs
on an association's thread.

An association is rejected, with the standard reason, when the called AE
title is not the node's (called AE title not recognised), the calling AE
title is not configured or comes from an address outside its entry (calling
AE title not recognised), or the spool's free space is below
``storage.min_free_disk_mb`` (transient, local limit exceeded). Every
association is logged once when its connection closes: calling AE, address,
files, bytes, duration, result, never patient data. Rejections, and
connections closed before any association request, are logged at most once
per ``node.rejection_log_interval_s`` for each (reason, calling AE, address),
with the number held back since the previous line. Accepted sockets get
``node.network_timeout_s`` as their socket timeout, so a peer stalling in the
middle of a PDU is cut off like an idle one.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicom_io.transfer_syntaxes import decodable_transfer_syntaxes
from node.config import ListenerConfig, NodeConfig
from node.metrics import rejection_kind
from node.receiver import Receiver
from node.spool import free_disk_mb

__all__ = ["AssociationRecord", "Listener", "server_ssl_context"]

logger = logging.getLogger(__name__)

_REJECT_PERMANENT, _REJECT_TRANSIENT = 0x01, 0x02
_SOURCE_USER, _SOURCE_PRESENTATION = 0x01, 0x03
_CALLING_NOT_RECOGNISED, _CALLED_NOT_RECOGNISED = 0x03, 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass
class AssociationRecord:
    """What one association did, as logged and recorded when it closes."""

    calling_ae: str = ""
    address: str = ""
    started: float = 0.0
    files: int = 0
    bytes: int = 0
    failures: int = 0
    result: str = "closed"
    started_at: float = 0.0


def server_ssl_context(tls: Any) -> ssl.SSLContext:
    """A server-side TLS context from ``node.tls`` (client certificates required with a CA).

    TLS 1.2 or 1.3 only; for TLS 1.2 only AEAD suites with forward secrecy
    (BCP 195); no compression, no renegotiation.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL")
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE)
    context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Listener:
    """The node's Storage SCP on its plain port and, when configured, its TLS port.

    Parameters
    ----------
    config
        The whole node configuration (listener, callers, storage threshold).
    receiver
        Takes each received instance.
    disk_free_mb
        Returns the spool's free space in MiB (injected for tests of the threshold).
    on_closed
        Called with each closed association's :class:`AssociationRecord` and
        its duration in seconds (the catalogue's log and the metrics).
    """

    def __init__(self, config: NodeConfig, receiver: Receiver, *,
                 disk_free_mb: Callable[[], float] | None = None,
                 on_closed: Callable[[AssociationRecord, float], None] | None = None) -> None:
        self.config = config
        self.receiver = receiver
        self._on_closed = on_closed
        self._disk_free_mb = disk_free_mb or (lambda: free_disk_mb(config.storage.spool_dir))
        self._stats: dict[int, AssociationRecord] = {}
        self._lock = threading.Lock()
        self._servers: list[Any] = []
        self._throttle = _Throttle(config.node.rejection_log_interval_s)
        self.ae = self._build_ae(config.node)

    def _build_ae(self, node: ListenerConfig) -> AE:
        # Identifiers of C-FIND/C-MOVE requests are patient data: never log them.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu_bytes
        ae.maximum_associations = node.max_associations
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        ae.require_called_aet = True
        if self.config.callers:
            ae.require_calling_aet = sorted({c.ae_title for c in self.config.callers})
        syntaxes = list(decodable_transfer_syntaxes())
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        return ae

    @property
    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        """The pynetdicom event handlers of this listener."""
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_result("rejected (local limit: max_associations)")),
            (evt.EVT_RELEASED, self._on_result("released")),
            (evt.EVT_ABORTED, self._on_result("aborted")),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]

    def start(self) -> None:
        """Start the plain and (if configured) TLS servers in background threads."""
        node = self.config.node
        self._servers.append(self.ae.start_server((node.host, node.port), block=False,
                                                  evt_handlers=self.handlers))
        logger.info("listening as %s on %s:%d", node.ae_title, node.host, node.port)
        if node.tls is not None:
            context = server_ssl_context(node.tls)
            self._servers.append(self.ae.start_server((node.host, node.tls.port), block=False,
                                                      evt_handlers=self.handlers,
                                                      ssl_context=context))
            logger.info("listening with TLS on %s:%d (client certificates %s)", node.host,
                        node.tls.port,
                        "required" if node.tls.ca_certificates else "not required")

    def stop(self) -> None:
        """Stop accepting associations and close the servers."""
        for server in self._servers:
            server.shutdown()
        self._servers.clear()
        self._log_held_back()

    @property
    def accepting(self) -> bool:
        """True while the listening sockets are open."""
        return bool(self._servers)

    def describe(self) -> str:
        """``AE@host:port`` (and the TLS port) for the status command."""
        node = self.config.node
        text = f"{node.ae_title}@{node.host}:{node.port}"
        return text + (f" (TLS {node.tls.port})" if node.tls is not None else "")

    # Handlers ------------------------------------------------------------------------------

    def _stats_for(self, assoc: Any) -> AssociationRecord:
        with self._lock:
            return self._stats.setdefault(id(assoc), AssociationRecord(
                started=time.monotonic(), started_at=time.time()))

    def _on_open(self, event: Any) -> None:
        # pynetdicom leaves accepted sockets blocking without a timeout: a peer that stops
        # in the middle of a PDU would hold its thread (and association slot) forever.
        self._stats_for(event.assoc).address = _address(event)
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.settimeout(self.config.node.network_timeout_s)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        called = assoc.requestor.primitive.called_ae_title.strip()
        address = assoc.requestor.address
        stats = self._stats_for(assoc)
        stats.calling_ae, stats.address = calling, address
        rejection = self._rejection(calling, called, address)
        if rejection is None:
            return
        reason, rsd = rejection
        stats.result = f"rejected ({reason})"
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    def _rejection(self, calling: str, called: str, address: str
                   ) -> tuple[str, tuple[int, int, int]] | None:
        if called != self.config.node.ae_title:
            return (f"called AE title {called!r} is not {self.config.node.ae_title!r}",
                    (_REJECT_PERMANENT, _SOURCE_USER, _CALLED_NOT_RECOGNISED))
        entries = [c for c in self.config.callers if c.ae_title == calling]
        if not entries:
            return (f"calling AE title {calling!r} is not configured",
                    (_REJECT_PERMANENT, _SOURCE_USER, _CALLING_NOT_RECOGNISED))
        if not any(entry.allows(address) for entry in entries):
            return (f"address {address} is not allowed for {calling!r}",
                    (_REJECT_PERMANENT, _SOURCE_USER, _CALLING_NOT_RECOGNISED))
        free = self._disk_free_mb()
        if free < self.config.storage.min_free_disk_mb:
            return (f"spool has {free:.0f} MiB free, below "
                    f"{self.config.storage.min_free_disk_mb} MiB",
                    (_REJECT_TRANSIENT, _SOURCE_PRESENTATION, _LOCAL_LIMIT_EXCEEDED))
        return None

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> int:
        stats = self._stats_for(event.assoc)
        data = event.encoded_dataset()
        status = self.receiver.receive(data, lambda: event.dataset, stats.calling_ae)
        stats.files += 1
        stats.bytes += len(data)
        stats.failures += status != 0x0000
        return status

    def _on_result(self, result: str) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            self._stats_for(event.assoc).result = result
        return handler

    def _on_close(self, event: Any) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        seconds = time.monotonic() - stats.started
        if stats.result == "closed" and not stats.calling_ae:
            self._log_throttled(logger.info, ("no request", "", stats.address),
                                "connection from %s closed after %.1f s before an association "
                                "request", stats.address, seconds)
            return
        message = "association from %s at %s: %d files (%d not stored), %.1f MB in %.2f s, %s"
        args = (stats.calling_ae, stats.address, stats.files, stats.failures,
                stats.bytes / 1e6, seconds, stats.result)
        if stats.result.startswith("rejected"):
            self._log_throttled(logger.warning, (rejection_kind(stats.result), stats.calling_ae,
                                                 stats.address), message, *args)
        else:
            logger.info(message, *args)
        if self._on_closed is not None:
            try:
                self._on_closed(stats, seconds)
            except Exception:  # noqa: BLE001 - the log of an association never fails it
                logger.exception("could not record the association from %s", stats.calling_ae)

    def _log_throttled(self, log: Callable[..., None], key: tuple[str, str, str], message: str,
                       *args: Any) -> None:
        held = self._throttle.admit(key)
        if held is not None:
            log(message + (f" ({held} more like it since the last line)" if held else ""), *args)

    def _log_held_back(self) -> None:
        for (kind, calling, address), held in self._throttle.drain().items():
            logger.info("%d more %s from %r at %s since the last line", held,
                        "connections closed before an association request"
                        if kind == "no request" else f"rejections ({kind})", calling, address)


def _address(event: Any) -> str:
    try:
        return str(event.address[0])
    except (AttributeError, IndexError, TypeError):
        return "?"


class _Throttle:
    """At most one log line per key per interval; counts the lines held back in between."""

    _MAX_KEYS = 4096

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[tuple[str, ...], float] = {}
        self._held: dict[tuple[str, ...], int] = {}

    def admit(self, key: tuple[str, ...]) -> int | None:
        """Lines held back for ``key`` since its last line, or None to hold this one back too."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if len(self._last) >= self._MAX_KEYS:
                self._last = {k: t for k, t in self._last.items()
                              if now - t < self.interval_s or k in self._held}
            self._last[key] = now
            return self._held.pop(key, 0)

    def drain(self) -> dict[tuple[str, ...], int]:
        """The held-back counts, forgotten (the next line of every key is logged)."""
        with self._lock:
            held, self._held = self._held, {}
            self._last.clear()
        return held
