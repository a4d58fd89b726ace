"""The listener in-process against a real pynetdicom SCU on 127.0.0.1.

Access control (calling/called AE, address, free disk), TLS with and without
client certificates, durable storage, duplicates, quarantine, a full disk and
several associations at once. No model runs here.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from node.catalogue import Catalogue
from node.config import NodeConfig
from node.listener import Listener
from node.receiver import Receiver
from node.spool import Quarantine, Spool
from tests.peers import (
    client_ssl_context,
    free_local_port,
    make_tls_material,
    write_phantom_series,
)

CALLER = "SCANNER"


class RunningListener:
    """A started listener with its catalogue and folders."""

    def __init__(self, root: Path, overrides: dict[str, Any],
                 disk_free_mb: Callable[[], float] | None = None) -> None:
        storage = {"spool_dir": root / "spool", "quarantine_dir": root / "quarantine",
                   "output_dir": root / "out", "min_free_disk_mb": 0}
        storage.update(overrides.pop("storage", {}))
        settings: dict[str, Any] = {
            "node": {"ae_title": "SEGNODE", "port": free_local_port()},
            "callers": [{"ae_title": CALLER, "addresses": ["127.0.0.1"]}],
            "storage": storage,
            "database": {"url": f"sqlite:///{root}/c.db"},
        }
        settings.update(overrides)
        self.config = NodeConfig(**settings)
        self.catalogue = Catalogue(self.config.database_url)
        self.spool = Spool(self.config.storage.spool_dir)
        self.quarantine = Quarantine(self.config.storage.quarantine_dir)
        receiver = Receiver(self.spool, self.quarantine, self.catalogue)
        self.listener = Listener(self.config, receiver, disk_free_mb=disk_free_mb)
        self.listener.start()

    @property
    def port(self) -> int:
        return self.config.node.port

    def stop(self) -> None:
        self.listener.stop()
        self.catalogue.close()


@pytest.fixture()
def start_listener(tmp_path: Path) -> Iterator[Callable[..., RunningListener]]:
    started: list[RunningListener] = []

    def _start(disk_free_mb: Callable[[], float] | None = None, **overrides: Any
               ) -> RunningListener:
        running = RunningListener(tmp_path / f"node{len(started)}", overrides, disk_free_mb)
        started.append(running)
        return running

    yield _start
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """A six-slice phantom MR series, as data sets."""
    folder = tmp_path_factory.mktemp("series")
    written = write_phantom_series(folder, uid_seed="listener-tests")
    return [pydicom.dcmread(path) for path in written.paths]


def _client(calling: str = CALLER) -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _associate(port: int, *, calling: str = CALLER, called: str = "SEGNODE",
               **kwargs: Any) -> Any:
    return _client(calling).associate("127.0.0.1", port, ae_title=called, **kwargs)


def _rejection(assoc: Any) -> tuple[int, int, int]:
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def test_echo_and_store_are_durable_and_catalogued(start_listener, series) -> None:
    node = start_listener()
    assoc = _associate(node.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    statuses = [assoc.send_c_store(ds).Status for ds in series]
    assoc.release()
    assert statuses == [0x0000] * len(series)
    uid = series[0].SeriesInstanceUID
    assert node.catalogue.instance_count(uid) == len(series)
    paths = node.catalogue.series_paths(uid)
    stored = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths}
    for ds in series:
        copy_ = stored[ds.SOPInstanceUID]
        assert copy_.PixelData == ds.PixelData
        assert paths[0].parent == node.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID
    row = node.catalogue.get_series(uid)
    assert row is not None and row["state"] == "receiving" and row["modality"] == "MR"


def test_compressed_transfer_syntax_is_accepted_and_kept_as_received(start_listener,
                                                                       series) -> None:
    node = start_listener()
    compressed = copy.deepcopy(series[0])
    compressed.compress(RLELossless)
    ae = AE(ae_title=CALLER)
    for syntax in (RLELossless, JPEG2000Lossless):  # one context each: both must be accepted
        ae.add_requested_context(MRImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    assert {cx.transfer_syntax[0] for cx in assoc.accepted_contexts} == {RLELossless,
                                                                        JPEG2000Lossless}
    assert assoc.send_c_store(compressed).Status == 0x0000
    assoc.release()
    (path,) = node.catalogue.series_paths(series[0].SeriesInstanceUID)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert (stored.pixel_array == series[0].pixel_array).all()


def test_unknown_calling_ae_is_rejected(start_listener) -> None:
    node = start_listener()
    assoc = _associate(node.port, calling="INTRUDER")
    assert assoc.is_rejected
    assert _rejection(assoc) == (0x01, 0x01, 0x03)  # permanent, user, calling AE not recognised


def test_wrong_called_ae_is_rejected(start_listener) -> None:
    node = start_listener()
    assoc = _associate(node.port, called="NOTSEGNODE")
    assert assoc.is_rejected
    assert _rejection(assoc) == (0x01, 0x01, 0x07)  # called AE title not recognised


def test_address_outside_the_callers_entry_is_rejected(start_listener) -> None:
    node = start_listener(callers=[{"ae_title": CALLER, "addresses": ["127.0.0.1/32"]},
                                   {"ae_title": "OTHER", "addresses": ["127.0.0.0/8"]}])
    outside = _associate(node.port, bind_address=("127.0.0.2", 0))
    assert outside.is_rejected
    assert _rejection(outside) == (0x01, 0x01, 0x03)
    inside = _associate(node.port, bind_address=("127.0.0.1", 0))
    assert inside.is_established
    inside.release()
    other = _associate(node.port, calling="OTHER", bind_address=("127.0.0.2", 0))
    assert other.is_established
    other.release()


def test_low_free_disk_refuses_new_associations_transiently(start_listener) -> None:
    free = {"mb": 5.0}
    node = start_listener(disk_free_mb=lambda: free["mb"], storage={"min_free_disk_mb": 10})
    refused = _associate(node.port)
    assert refused.is_rejected
    assert _rejection(refused) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
    free["mb"] = 500.0
    accepted = _associate(node.port)
    assert accepted.is_established
    accepted.release()


def _after_meta(raw: bytes) -> bytes:
    """The data set bytes of a DICOM file (after preamble and file meta group)."""
    return raw[132 + 12 + int.from_bytes(raw[140:144], "little"):]


def _corrupt_file(tmp_path: Path, template: pydicom.Dataset) -> Path:
    """A file with valid file meta and a data set that cannot be parsed."""
    good = tmp_path / "good.dcm"
    template.save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    bad = tmp_path / "corrupt.dcm"
    garbage = b"\x08\x00\x16\x00" + b"UI" + b"\xff\xff" + b"\x01" * 40
    bad.write_bytes(raw[:len(raw) - len(_after_meta(raw))] + garbage)
    return bad


def test_corrupt_instance_is_quarantined_and_the_next_is_stored(start_listener, series,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    # Send the file's bytes as they are (pynetdicom would parse it otherwise).
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    node = start_listener()
    bad = _corrupt_file(tmp_path, series[0])
    assoc = _associate(node.port)
    assert assoc.send_c_store(bad).Status == 0xC210
    assert assoc.send_c_store(series[1]).Status == 0x0000
    assoc.release()
    entries = node.catalogue.list_quarantine()
    assert len(entries) == 1
    assert entries[0]["reason"].startswith("not a readable DICOM instance")
    kept = Path(entries[0]["path"])
    assert _after_meta(kept.read_bytes()) == _after_meta(bad.read_bytes())
    assert entries[0]["reason"] in kept.with_suffix(".txt").read_text()
    assert node.catalogue.instance_count() == 1


def test_duplicate_sop_instance_uid_replaces_only_when_content_differs(start_listener,
                                                                       series) -> None:
    node = start_listener()
    assoc = _associate(node.port)
    assert assoc.send_c_store(series[0]).Status == 0x0000
    path = node.catalogue.series_paths(series[0].SeriesInstanceUID)[0]
    first_mtime = path.stat().st_mtime_ns
    assert assoc.send_c_store(series[0]).Status == 0x0000  # identical resend: no change
    changed = copy.deepcopy(series[0])
    changed.SeriesDescription = "corrected by the technologist"
    assert assoc.send_c_store(changed).Status == 0x0000
    assoc.release()
    assert node.catalogue.instance_count() == 1
    assert pydicom.dcmread(path).SeriesDescription == "corrected by the technologist"
    assert path.stat().st_mtime_ns >= first_mtime


def test_logs_carry_no_patient_data(start_listener, series, caplog) -> None:
    node = start_listener()
    ds = copy.deepcopy(series[0])
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-998877"
    caplog.set_level(logging.DEBUG)
    assoc = _associate(node.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    node.listener.stop()  # the association line is logged when the connection closes
    assert "association from SCANNER at 127.0.0.1: 1 files" in caplog.text
    assert "Doe" not in caplog.text and "PID-998877" not in caplog.text


def test_tls_requires_a_client_certificate_signed_by_the_ca(start_listener,
                                                            tmp_path: Path) -> None:
    material = make_tls_material(tmp_path / "tls")
    tls_port = free_local_port()
    node = start_listener(node={"ae_title": "SEGNODE", "port": free_local_port(), "tls": {
        "port": tls_port, "certificate": material.server_cert,
        "private_key": material.server_key, "ca_certificates": material.ca_cert}})
    good = _client().associate("127.0.0.1", tls_port, ae_title="SEGNODE",
                               tls_args=(client_ssl_context(material), "localhost"))
    assert good.is_established
    assert good.send_c_echo().Status == 0x0000
    good.release()
    for context in (client_ssl_context(material, with_client_cert=False),
                    client_ssl_context(material, rogue=True)):
        refused = _client().associate("127.0.0.1", tls_port, ae_title="SEGNODE",
                                      tls_args=(context, "localhost"))
        assert not refused.is_established
    plain = _associate(node.port)
    assert plain.is_established
    plain.release()


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root to mount a small tmpfs as the spool"
    folder.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else f"cannot mount tmpfs: {result.stderr.strip()}"


def test_full_disk_answers_out_of_resources_and_keeps_what_was_stored(start_listener, series,
                                                                      tmp_path: Path) -> None:
    spool = tmp_path / "small-disk"
    reason = _mount_tmpfs(spool, "400k")
    if reason:
        pytest.skip(reason)
    try:
        node = start_listener(storage={"spool_dir": spool})
        assoc = _associate(node.port)
        statuses: dict[str, int] = {}
        for index in range(200):
            ds = copy.deepcopy(series[index % len(series)])
            ds.SOPInstanceUID = generate_uid()
            statuses[ds.SOPInstanceUID] = assoc.send_c_store(ds).Status
            if statuses[ds.SOPInstanceUID] != 0x0000:
                break
        assert assoc.send_c_echo().Status == 0x0000  # the node keeps serving
        assoc.release()
        stored = [uid for uid, status in statuses.items() if status == 0x0000]
        assert 0 < len(stored) < len(statuses)
        assert list(statuses.values())[-1] == 0xA700  # Out of Resources: the sender retries
        paths = node.catalogue.series_paths(series[0].SeriesInstanceUID)
        assert sorted(p.stem for p in paths) == sorted(stored)
        assert all(pydicom.dcmread(p).SOPInstanceUID == p.stem for p in paths)
        assert not list((spool / ".tmp").iterdir())  # no partial file left behind
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_concurrent_associations_lose_nothing(start_listener, series) -> None:
    node = start_listener(node={"ae_title": "SEGNODE", "port": free_local_port(),
                                "max_associations": 8})
    senders, per_sender = 4, 150  # harden.load sends 10 x 500
    failures: list[str] = []

    def send(worker: int) -> None:
        assoc = _associate(node.port)
        if not assoc.is_established:
            failures.append(f"sender {worker}: no association")
            return
        for index in range(per_sender):
            ds = copy.copy(series[index % len(series)])
            ds.SOPInstanceUID = generate_uid()
            status = assoc.send_c_store(ds)
            if status.Status != 0x0000:
                failures.append(f"sender {worker} #{index}: 0x{status.Status:04X}")
        assoc.release()

    threads = [threading.Thread(target=send, args=(w,)) for w in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert failures == []
    uid = series[0].SeriesInstanceUID
    assert node.catalogue.instance_count(uid) == senders * per_sender
    assert len(list((node.spool.root / series[0].StudyInstanceUID / uid).glob("*.dcm"))) == (
        senders * per_sender)
