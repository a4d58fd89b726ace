"""Talking to destinations as an SCU: associations, C-ECHO, C-STORE, failures in words.

Every failure is classified: *transient* (connection refused, timeout,
association aborted or rejected transiently, Out of Resources and other
"try later" statuses) is retried by the dispatcher with backoff;
*permanent* (association rejected permanently, SOP class or transfer syntax
not accepted, the peer refusing the data set) fails the delivery at once.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import DestinationConfig, ListenerConfig
from segnode_errors import SegnodeError

__all__ = ["SendFailure", "associate", "echo", "status_failure", "client_ssl_context"]

#: Statuses after which sending the same data again later may succeed.
_TRANSIENT_STATUSES = {0x0110: "processing failure", 0x0213: "resource limitation"}


class SendFailure(SegnodeError):
    """Raised when an exchange with a destination fails; ``transient`` says whether to retry."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def client_ssl_context(dest: DestinationConfig) -> ssl.SSLContext | None:
    """A TLS client context for ``dest``, or None when it has no TLS."""
    if dest.tls is None:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(dest.tls.ca_certificates) if dest.tls.ca_certificates else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls.certificate is not None:
        context.load_cert_chain(str(dest.tls.certificate),
                                str(dest.tls.private_key) if dest.tls.private_key else None)
    return context


def _rejection_words(assoc: Any) -> tuple[str, bool]:
    primitive = assoc.acceptor.primitive
    if primitive is None or primitive.result is None:
        return "association rejected", False
    transient = primitive.result == 0x02
    return (f"association rejected ({primitive.result_str.lower()}): "
            f"{primitive.reason_str}", transient)


@contextmanager
def associate(dest: DestinationConfig, node: ListenerConfig,
              contexts: Iterable[tuple[str, tuple[str, ...]]]) -> Iterator[Any]:
    """An established association with ``dest`` proposing ``contexts``; released on exit.

    ``contexts`` are (SOP Class UID, transfer syntaxes) pairs.

    Raises
    ------
    SendFailure
        When the association cannot be established, in words.
    """
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.connection_timeout = node.acse_timeout_s
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    context = client_ssl_context(dest)
    tls_args = (context, dest.tls.server_hostname or dest.host) if context is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                         max_pdu=node.max_pdu_bytes, tls_args=tls_args)
    if assoc.is_rejected:
        message, transient = _rejection_words(assoc)
        raise SendFailure(f"{dest.name}: {message}", transient)
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = sorted({cx.abstract_syntax.name for cx in assoc.rejected_contexts})
        raise SendFailure(f"{dest.name}: {dest.ae_title} accepts none of the proposed SOP "
                          f"classes and transfer syntaxes ({', '.join(refused)})", False)
    if not assoc.is_established:
        raise SendFailure(f"{dest.name}: no association with {dest.ae_title}@{dest.host}:"
                          f"{dest.port} (connection refused, timed out or aborted)", True)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def status_failure(status: Any, what: str) -> SendFailure | None:
    """None when a C-STORE/C-ECHO response status is success or warning, else the failure."""
    if status is None or "Status" not in status:
        return SendFailure(f"{what}: no response (association aborted or timed out)", True)
    code = int(status.Status)
    if code == 0x0000 or code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return None
    comment = str(status.get("ErrorComment", "")).strip()
    suffix = f" ({comment})" if comment else ""
    if 0xA700 <= code <= 0xA7FF:
        return SendFailure(f"{what}: out of resources 0x{code:04X}{suffix}", True)
    if code in _TRANSIENT_STATUSES:
        return SendFailure(f"{what}: {_TRANSIENT_STATUSES[code]} 0x{code:04X}{suffix}", True)
    if code == 0x0122:
        return SendFailure(f"{what}: SOP class not supported 0x0122{suffix}", False)
    return SendFailure(f"{what}: refused with status 0x{code:04X}{suffix}", False)


def echo(dest: DestinationConfig, node: ListenerConfig) -> None:
    """C-ECHO ``dest``; raises :class:`SendFailure` in words when it does not answer success."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    with associate(dest, node, [(Verification, (ExplicitVRLittleEndian,
                                                ImplicitVRLittleEndian))]) as assoc:
        failure = status_failure(assoc.send_c_echo(), f"{dest.name}: C-ECHO")
        if failure is not None:
            raise failure
