"""The dispatcher against real pynetdicom Storage SCPs on 127.0.0.1.

Each SCP answers as a PACS might: success, Out of Resources, a refusal,
a permanent association rejection, no SEG support, or nobody listening.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification

from node.catalogue import Catalogue
from node.config import NodeConfig
from node.dispatcher import Dispatcher
from node.outbox import Outbox
from tests.node.fakes import FakeClock
from tests.peers import (
    free_local_port,
    make_tls_material,
    server_ssl_context,
    write_phantom_series,
)


class StorageSCP:
    """A pynetdicom Storage SCP answering every C-STORE with ``status``."""

    def __init__(self, status: int = 0x0000, *, ae_title: str = "PACS",
                 accept_mr: bool = True, ssl_context: Any = None) -> None:
        self.status = status
        self.received: list[str] = []
        self.port = free_local_port()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        if accept_mr:
            ae.add_supported_context(MRImageStorage)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
                                      ssl_context=ssl_context)

    def _on_store(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def scps() -> Iterator[list[StorageSCP]]:
    started: list[StorageSCP] = []
    yield started
    for scp in started:
        scp.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return list(write_phantom_series(tmp_path_factory.mktemp("out"),
                                     uid_seed="dispatch").paths[:3])


def _setup(tmp_path: Path, port: int, *, ae_title: str = "PACS", tls: Any = None
           ) -> tuple[Dispatcher, Outbox, FakeClock]:
    clock = FakeClock(1000.0)
    config = NodeConfig(
        destinations=[{"name": "pacs", "ae_title": ae_title, "host": "127.0.0.1",
                       "port": port, "tls": tls}],
        timing={"retry": {"initial_delay_s": 10, "backoff_factor": 2, "max_delay_s": 30,
                          "max_age_s": 100}},
        node={"acse_timeout_s": 5, "dimse_timeout_s": 5, "network_timeout_s": 5},
    )
    catalogue = Catalogue(f"sqlite:///{tmp_path}/c.db", clock=clock)
    outbox = Outbox(catalogue, config.timing.retry)
    return Dispatcher(config, outbox), outbox, clock


def _queue(outbox: Outbox, files: list[Path]) -> None:
    for index, path in enumerate(files):
        outbox.add(1, "pacs", path, f"1.2.3.{index}")


def test_success_marks_every_delivery_done(tmp_path, scps, files) -> None:
    scps.append(StorageSCP())
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port)
    _queue(outbox, files)
    assert dispatcher.run_once() == len(files)
    assert [d.state for d in outbox.list()] == ["done"] * len(files)
    assert len(scps[0].received) == len(files)
    assert dispatcher.run_once() == 0  # nothing is sent twice


def test_out_of_resources_is_retried_with_backoff_until_it_succeeds(tmp_path, scps,
                                                                    files) -> None:
    scps.append(StorageSCP(0xA700))
    dispatcher, outbox, clock = _setup(tmp_path, scps[0].port)
    _queue(outbox, files[:1])
    assert dispatcher.run_once() == 0
    (row,) = outbox.list()
    assert row.state == "pending" and row.attempts == 1 and row.next_attempt_at == 1010.0
    assert "out of resources 0xA700" in row.last_error
    assert dispatcher.run_once() == 0 and outbox.list()[0].attempts == 1  # not due yet
    clock.advance(10)
    dispatcher.run_once()
    assert outbox.list()[0].next_attempt_at == clock() + 20  # 10 * 2
    scps[0].status = 0x0000
    clock.advance(20)
    assert dispatcher.run_once() == 1
    assert outbox.list()[0].state == "done"


def test_transient_failures_give_up_after_the_maximum_age(tmp_path, files) -> None:
    port = free_local_port()  # nobody listens: connection refused
    dispatcher, outbox, clock = _setup(tmp_path, port)
    _queue(outbox, files[:1])
    dispatcher.run_once()
    row = outbox.list()[0]
    assert row.state == "pending" and "connection refused" in row.last_error
    clock.advance(100)
    dispatcher.run_once()
    row = outbox.list()[0]
    assert row.state == "failed" and row.last_error.startswith("gave up after 2 attempts")
    assert outbox.retry(row.id) == 1 and outbox.list()[0].state == "pending"


def test_permanent_rejection_fails_at_once(tmp_path, scps, files) -> None:
    scps.append(StorageSCP(ae_title="PACS"))
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port, ae_title="WRONGAE")
    _queue(outbox, files[:2])
    dispatcher.run_once()
    rows = outbox.list()
    assert [r.state for r in rows] == ["failed", "failed"]
    assert all(r.attempts == 1 and "association rejected" in r.last_error
               and "permanent" in r.last_error for r in rows)


def test_sop_class_not_accepted_fails_at_once(tmp_path, scps, files) -> None:
    scps.append(StorageSCP(accept_mr=False))
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port)
    _queue(outbox, files[:1])
    dispatcher.run_once()
    row = outbox.list()[0]
    assert row.state == "failed" and row.attempts == 1
    assert "accepts none of the proposed SOP classes" in row.last_error
    assert "MR Image Storage" in row.last_error


def test_refusal_status_fails_at_once(tmp_path, scps, files) -> None:
    scps.append(StorageSCP(0xA900))  # data set does not match SOP class
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port)
    _queue(outbox, files[:1])
    dispatcher.run_once()
    row = outbox.list()[0]
    assert row.state == "failed" and "0xA900" in row.last_error


def test_tls_destination_with_client_certificate(tmp_path, scps, files) -> None:
    material = make_tls_material(tmp_path / "tls")
    scps.append(StorageSCP(ssl_context=server_ssl_context(material)))
    tls = {"ca_certificates": material.ca_cert, "certificate": material.client_cert,
           "private_key": material.client_key, "server_hostname": "localhost"}
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port, tls=tls)
    _queue(outbox, files[:2])
    assert dispatcher.run_once() == 2
    assert len(scps[0].received) == 2


def test_tls_destination_refuses_an_untrusted_server(tmp_path, scps, files) -> None:
    material = make_tls_material(tmp_path / "tls")
    scps.append(StorageSCP(ssl_context=server_ssl_context(material, require_client_cert=False)))
    # The system CAs do not know the test CA: the handshake fails, nothing is sent.
    dispatcher, outbox, _ = _setup(tmp_path, scps[0].port, tls=True)
    _queue(outbox, files[:1])
    assert dispatcher.run_once() == 0
    assert scps[0].received == [] and outbox.list()[0].state == "pending"
