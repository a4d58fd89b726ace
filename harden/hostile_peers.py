"""Hostile or broken DICOM peers against a real listener on 127.0.0.1.

Each attack runs against a fresh :class:`NodeUnderTest` (real Listener,
Receiver, Spool, Quarantine and a SQLite Catalogue in a temp folder, short
timeouts) and makes one :class:`~harden.results.CheckResult`. An attack
passes when, during it, an allowed peer can still C-ECHO and C-STORE within
the configured timeouts, stalled connections are closed by the node within
them, nothing half-received is catalogued, and the node logs the case a
bounded number of times (not once per packet or attempt).

Usage::

    .venv/bin/python -m harden.run_all --only hostile_peers [--budget short|long]
"""

from __future__ import annotations

import logging
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AddressInformation

from harden.results import CheckResult
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.listener import Listener
from node.receiver import Receiver
from node.spool import Quarantine, Spool

__all__ = ["CALLER", "NodeUnderTest", "associate", "node_under_test", "probe", "run", "scu",
           "tiny_instance"]

CALLER = "SCANNER"
PATIENT_NAME, PATIENT_ID = "HARDEN^PHANTOM", "HARDEN-PID-4711"
_TIMEOUTS = {"acse_timeout_s": 2.0, "dimse_timeout_s": 3.0, "network_timeout_s": 3.0}
_COUNTS = {"short": {"idle": 6, "stall": 3, "abort": 6, "tiny": 300, "contexts": 10,
                     "rejected": 100},
           "long": {"idle": 40, "stall": 12, "abort": 40, "tiny": 10_000, "contexts": 100,
                    "rejected": 2000}}


class _Lines(logging.Handler):
    """Keeps every record it is handed (the node's log during one attack)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@dataclass
class NodeUnderTest:
    """A started listener, its catalogue and what it logged."""

    config: NodeConfig
    catalogue: Catalogue
    spool: Spool
    listener: Listener
    log: _Lines = field(default_factory=_Lines)

    @property
    def port(self) -> int:
        return self.config.node.port

    @property
    def limit_s(self) -> float:
        """Longest a connection may stall or an allowed peer wait: the largest timeout."""
        node = self.config.node
        return max(node.acse_timeout_s, node.dimse_timeout_s, node.network_timeout_s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def node_under_test(root: Path, settings: dict[str, Any] | None = None, **node: Any
                    ) -> Iterator[NodeUnderTest]:
    """A listener on a free port of 127.0.0.1 with short timeouts.

    ``node`` overrides keys of ``node``, ``settings`` adds other sections
    (``timing``, ``rules``). ``SCANNER`` may call from 127.0.0.1;
    ``REMOTEONLY`` only from 10.0.0.0/8. The node's log (``node`` loggers
    at INFO, ``pynetdicom`` at WARNING, as ``segnode serve`` sets them) is
    kept in ``log``.
    """
    config = NodeConfig(
        node={"port": _free_port(), "max_associations": 4, **_TIMEOUTS, **node},
        callers=[{"ae_title": CALLER, "addresses": ["127.0.0.1"]},
                 {"ae_title": "REMOTEONLY", "addresses": ["10.0.0.0/8"]}],
        storage={"spool_dir": root / "spool", "quarantine_dir": root / "quarantine",
                 "output_dir": root / "out", "min_free_disk_mb": 0},
        database={"url": f"sqlite:///{root}/catalogue.db"},
        **(settings or {}),
    )
    catalogue = Catalogue(config.database_url)
    spool = Spool(config.storage.spool_dir)
    receiver = Receiver(spool, Quarantine(config.storage.quarantine_dir), catalogue)
    running = NodeUnderTest(config, catalogue, spool, Listener(config, receiver))
    loggers = {name: logging.getLogger(name) for name in ("node", "pynetdicom")}
    levels = {name: lg.level for name, lg in loggers.items()}
    loggers["node"].setLevel(logging.INFO)
    loggers["pynetdicom"].setLevel(logging.WARNING)
    for lg in loggers.values():
        lg.addHandler(running.log)
    running.listener.start()
    try:
        yield running
    finally:
        running.listener.stop()
        catalogue.close()
        for name, lg in loggers.items():
            lg.removeHandler(running.log)
            lg.setLevel(levels[name])


def tiny_instance(series_uid: str, study_uid: str, number: int) -> Dataset:
    """An 8 x 8 CT image with fresh SOP Instance UID (the phantom patient)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.full((8, 8), number % 4096, dtype=np.uint16).tobytes()
    return ds


def _series() -> tuple[str, str]:
    return generate_uid(), generate_uid()


def scu(*contexts: str) -> AE:
    """An allowed peer's AE requesting ``contexts`` (Explicit VR Little Endian)."""
    ae = AE(ae_title=CALLER)
    for abstract in contexts:
        ae.add_requested_context(abstract, ExplicitVRLittleEndian)
    return ae


def associate(ae: AE, port: int, called: str, timeout_s: float) -> Any:
    """``ae`` associated with ``called`` on 127.0.0.1, with TCP_NODELAY on its socket.

    Without it the command and data set PDUs of each C-STORE meet the
    receiver's delayed ACK (Nagle): about 40 ms per tiny instance on Linux,
    which would measure the client's socket, not the node.
    """
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae.associate("127.0.0.1", port, ae_title=called,
                        evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])


def _no_delay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def probe(node: NodeUnderTest, deadline_s: float) -> tuple[float | None, str]:
    """Seconds until an allowed peer has C-ECHOed and C-STOREd once (None: not by the deadline).

    A rejected or failed attempt is retried until ``deadline_s``; the second
    value says why the last attempt failed.
    """
    ae = scu(Verification, CTImageStorage)
    start, why = time.monotonic(), ""
    while time.monotonic() - start < deadline_s:
        assoc = associate(ae, node.port, node.config.node.ae_title, node.limit_s)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "no association"
            time.sleep(0.05)
            continue
        series, study = _series()
        echo = assoc.send_c_echo()
        store = assoc.send_c_store(tiny_instance(series, study, 1))
        assoc.release()
        if getattr(echo, "Status", None) == 0 and getattr(store, "Status", None) == 0:
            return time.monotonic() - start, ""
        why = "echo or store failed"
    return None, why or "deadline"


def _associate_rq(calling: str, called: str, contexts: list[tuple[str, list[str]]]) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing ``contexts`` (abstract syntax, transfer syntaxes)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 0)
    proposed = []
    for index, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = (2 * index + 1) % 256 or 255
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU from ``sock`` (b"" when the peer closed first)."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return b""
        header += chunk
    body = b""
    length = int.from_bytes(header[2:6], "big")
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return b""
        body += chunk
    return header + body


def _open_association(node: NodeUnderTest) -> tuple[socket.socket, int] | None:
    """A raw socket with an accepted association proposing CT storage, and its context id.

    None when the node answered A-ASSOCIATE-RJ; raises on any other answer.
    """
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=node.limit_s * 3)
    sock.sendall(_associate_rq(CALLER, node.config.node.ae_title,
                               [(CTImageStorage, [ExplicitVRLittleEndian])]))
    answer = _read_pdu(sock)
    if answer[:1] != b"\x02":
        sock.close()
        if answer[:1] == b"\x03":
            return None
        raise RuntimeError(f"association not accepted (PDU type {answer[:1].hex() or 'none'})")
    accepted = A_ASSOCIATE_AC()
    accepted.decode(answer)
    ids = [cx.context_id for cx in accepted.presentation_context if cx.result == 0]
    return sock, int(ids[0])


def _store_pdus(ds: Dataset, context_id: int, max_pdu: int = 1024) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE of ``ds`` (command, then data set fragments)."""
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, ds)
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = 1, 2
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.DataSet = BytesIO(encoded.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = []
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus.append(bytes(pdu.encode()))
    return pdus


def _wait_closed(socks: list[socket.socket], limit_s: float) -> list[float | None]:
    """Seconds until the node closed each socket (None: still open after ``limit_s``)."""
    start = time.monotonic()
    closed: list[float | None] = [None] * len(socks)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    while selector.get_map() and time.monotonic() - start < limit_s:
        for key, _ in selector.select(timeout=0.05):
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                closed[key.data] = time.monotonic() - start
                selector.unregister(key.fileobj)
    selector.close()
    for sock in socks:
        sock.close()
    return closed


def _in_thread(work: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``work`` in a thread; the returned call waits for and returns its result."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(work()), daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        return box[0]
    return result


def _lines(node: NodeUnderTest, *words: str) -> list[str]:
    return [line for line in node.log.lines if all(w in line for w in words)]


@dataclass
class _Outcome:
    """What one attack observed, turned into its row by :meth:`row`."""

    check: str
    tried: int
    served_s: float | None = None
    served_why: str = ""
    closed_s: list[float | None] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def row(self, node: NodeUnderTest, extra: str = "") -> CheckResult:
        findings = list(self.findings)
        if self.served_s is None:
            findings.append(f"allowed peer not served within {node.limit_s * 2:g} s "
                            f"({self.served_why})")
        open_after = [i for i, s in enumerate(self.closed_s) if s is None]
        if open_after:
            findings.append(f"{len(open_after)} stalled connection(s) still open after "
                            f"{node.limit_s * 2:g} s")
        leaked = [line for line in node.log.lines if PATIENT_NAME in line or PATIENT_ID in line]
        if leaked:
            findings.append(f"log line with patient data: {leaked[0][:120]}")
        parts = [f"allowed peer served in {self.served_s:.2f} s" if self.served_s is not None
                 else "allowed peer not served"]
        closed = [s for s in self.closed_s if s is not None]
        if closed:
            parts.append(f"stalled closed after {max(closed):.1f} s")
        parts += [extra] if extra else []
        return CheckResult(self.check, self.tried, len(findings), "; ".join(parts), findings)


# Attacks -------------------------------------------------------------------------------------


def idle_connections(node: NodeUnderTest, count: int) -> CheckResult:
    """TCP connections that open and never send anything (more than max_associations)."""
    socks = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(count)]
    served = _in_thread(lambda: probe(node, node.limit_s * 2))
    outcome = _Outcome("hostile: idle connections", count,
                       closed_s=_wait_closed(socks, node.limit_s * 2))
    outcome.served_s, outcome.served_why = served()
    lines = len(_lines(node, "before an association request"))
    if lines > 1:
        outcome.findings.append(f"{lines} log lines for {count} idle connections")
    return outcome.row(node, f"{lines} log line(s)")


def stalled_pdu(node: NodeUnderTest, count: int) -> CheckResult:
    """Accepted associations, each then sending half a P-DATA PDU and nothing more.

    Beyond ``max_associations`` stalled ones the node must refuse the next
    (local limit exceeded), and serve the allowed peer once it cut them off.
    """
    series, study = _series()
    socks, refused, findings = [], 0, []
    for number in range(count):
        opened = _open_association(node)
        if opened is None:
            refused += 1
            if len(socks) < node.config.node.max_associations:
                findings.append(f"refused with only {len(socks)} association(s) stalled")
            continue
        sock, context_id = opened
        pdus = _store_pdus(tiny_instance(series, study, number), context_id)
        sock.sendall(pdus[0][: len(pdus[0]) // 2])
        socks.append(sock)
    served = _in_thread(lambda: probe(node, node.limit_s * 2))
    outcome = _Outcome("hostile: half a P-DATA then stall", count, findings=findings,
                       closed_s=_wait_closed(socks, node.limit_s * 2))
    outcome.served_s, outcome.served_why = served()
    if node.catalogue.instance_count(series):
        outcome.findings.append("a half-sent instance was catalogued")
    return outcome.row(node, f"{refused} refused (max_associations)" if refused else "")


def abort_mid_transfer(node: NodeUnderTest, count: int) -> CheckResult:
    """C-STOREs cut off in their data set: A-ABORT on even tries, a closed socket on odd ones."""
    series, study = _series()
    outcome = _Outcome("hostile: abort mid C-STORE", count)
    for number in range(count):
        opened = _open_association(node)
        if opened is None:
            outcome.findings.append(f"try {number}: refused")
            continue
        sock, context_id = opened
        pdus = _store_pdus(tiny_instance(series, study, number), context_id, max_pdu=256)
        for pdu in pdus[:-1]:
            sock.sendall(pdu)
        if number % 2 == 0:
            sock.sendall(bytes.fromhex("07000000000400000000"))
        sock.close()
    outcome.served_s, outcome.served_why = probe(node, node.limit_s * 2)
    if node.catalogue.instance_count(series):
        outcome.findings.append(f"{node.catalogue.instance_count(series)} cut-off instance(s) "
                                "catalogued")
    leftovers = list(node.spool.tmp.glob("*.part")) + list(node.spool.root.glob(f"*/{series}/*"))
    if leftovers:
        outcome.findings.append(f"{len(leftovers)} file(s) of cut-off instances in the spool")
    return outcome.row(node)


def many_tiny_instances(node: NodeUnderTest, count: int) -> CheckResult:
    """``count`` 8 x 8 instances over one association, all of which must be catalogued."""
    series, study = _series()
    outcome = _Outcome("hostile: tiny instances on one association", count)
    assoc = associate(scu(CTImageStorage), node.port, node.config.node.ae_title,
                      node.limit_s)
    start = time.monotonic()
    served: Callable[[], Any] | None = None
    bad = 0
    for number in range(count):
        status = assoc.send_c_store(tiny_instance(series, study, number))
        bad += getattr(status, "Status", None) != 0
        if number == count // 2:
            served = _in_thread(lambda: probe(node, node.limit_s * 2))
    seconds = time.monotonic() - start
    assoc.release()
    if served is not None:
        outcome.served_s, outcome.served_why = served()
    stored = node.catalogue.instance_count(series)
    if bad or stored != count:
        outcome.findings.append(f"{bad} C-STORE(s) failed; {stored} of {count} catalogued")
    return outcome.row(node, f"{count / seconds:.0f} instances/s")


def many_contexts(node: NodeUnderTest, count: int) -> CheckResult:
    """Associations proposing 128 presentation contexts, then one C-STORE on each."""
    contexts = [(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                for cx in AllStoragePresentationContexts[:127]] + [(Verification, [
                    ImplicitVRLittleEndian])]
    ct_id = 2 * [abstract for abstract, _ in contexts].index(CTImageStorage) + 1
    series, study = _series()
    outcome = _Outcome("hostile: 128 presentation contexts", count)
    slowest, answered = 0.0, 0
    for number in range(count):
        start = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=node.limit_s * 2)
        sock.sendall(_associate_rq(CALLER, node.config.node.ae_title, contexts))
        answer = _read_pdu(sock)
        slowest = max(slowest, time.monotonic() - start)
        if answer[:1] != b"\x02":
            outcome.findings.append(f"try {number}: answered PDU {answer[:1].hex() or 'none'}")
            sock.close()
            continue
        accepted = A_ASSOCIATE_AC()
        accepted.decode(answer)
        if sum(cx.result == 0 for cx in accepted.presentation_context) != len(contexts):
            outcome.findings.append(f"try {number}: not every context accepted")
        for pdu in _store_pdus(tiny_instance(series, study, number), ct_id):
            sock.sendall(pdu)
        response = _read_pdu(sock)
        sock.sendall(bytes.fromhex("05000000000400000000"))
        _read_pdu(sock)
        sock.close()
        answered += response[:1] == b"\x04"
    outcome.served_s, outcome.served_why = probe(node, node.limit_s * 2)
    stored = node.catalogue.instance_count(series)
    if answered != count or stored != count:
        outcome.findings.append(f"{answered} of {count} C-STOREs answered, {stored} catalogued")
    return outcome.row(node, f"negotiated in at most {slowest * 1000:.0f} ms")


def rejected_flood(node: NodeUnderTest, count: int) -> CheckResult:
    """Unknown calling AE (half) and a known AE from a disallowed address (half), in a loop."""
    outcome = _Outcome("hostile: rejected callers in a tight loop", count)
    called = node.config.node.ae_title
    requests = {name: _associate_rq(name, called, [(Verification, [ImplicitVRLittleEndian])])
                for name in ("INTRUDER", "REMOTEONLY")}
    served: Callable[[], Any] | None = None
    not_rejected, began = 0, time.monotonic()
    for number in range(count):
        with socket.create_connection(("127.0.0.1", node.port), timeout=node.limit_s) as sock:
            sock.sendall(requests["INTRUDER" if number % 2 else "REMOTEONLY"])
            not_rejected += _read_pdu(sock)[:1] != b"\x03"
        if number == count // 2:
            served = _in_thread(lambda: probe(node, node.limit_s * 2))
    if served is not None:
        outcome.served_s, outcome.served_why = served()
    if not_rejected:
        outcome.findings.append(f"{not_rejected} of {count} not answered with A-ASSOCIATE-RJ")
    lines = len(_lines(node, "rejected"))
    # One line per kind (unknown AE, disallowed address) and interval begun.
    intervals = 1 + int((time.monotonic() - began) / node.config.node.rejection_log_interval_s)
    if lines > 2 * intervals:
        outcome.findings.append(f"{lines} log lines for {count} rejected associations")
    return outcome.row(node, f"{lines} log line(s) for {count} rejections")


_ATTACKS: list[tuple[Callable[[NodeUnderTest, int], CheckResult], str]] = [
    (idle_connections, "idle"), (stalled_pdu, "stall"), (abort_mid_transfer, "abort"),
    (many_tiny_instances, "tiny"), (many_contexts, "contexts"), (rejected_flood, "rejected"),
]


def run(budget: str = "short",
        inspect: Callable[[CheckResult, NodeUnderTest], None] | None = None
        ) -> list[CheckResult]:
    """Every attack against its own fresh node; ``budget`` is ``"short"`` or ``"long"``.

    ``inspect`` is called with each row and its node while the node still runs.
    """
    counts = _COUNTS[budget]
    rows = []
    with tempfile.TemporaryDirectory(prefix="segnode-hostile-") as folder:
        for index, (attack, key) in enumerate(_ATTACKS):
            with node_under_test(Path(folder) / str(index)) as node:
                try:
                    row = attack(node, counts[key])
                except Exception as exc:  # noqa: BLE001 - a crashed attack is a failed row
                    row = CheckResult(f"hostile: {attack.__name__}", counts[key], 1,
                                      "attack crashed", [f"{type(exc).__name__}: {exc}"])
                rows.append(row)
                if inspect is not None:
                    inspect(row, node)
    return rows
