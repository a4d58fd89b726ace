"""Self-test of :mod:`tests.peers`: namespaces, Orthanc, DCMTK, TLS material."""

from __future__ import annotations

import os
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.peers import (
    NetNamespace,
    Orthanc,
    PeerHTTPError,
    PhantomSeries,
    StoreSCP,
    TLSMaterial,
    client_ssl_context,
    dcmtk_available,
    echoscu,
    free_local_port,
    make_tls_material,
    netns_available,
    orthanc_available,
    server_ssl_context,
    storescu,
    write_phantom_series,
)

pytestmark = pytest.mark.timeout(120)


def _skip_unless(*reasons: str | None) -> None:
    for reason in reasons:
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    """A 6-slice phantom MR series."""
    return write_phantom_series(tmp_path_factory.mktemp("phantom") / "mr", uid_seed="peers-infra")


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    """One private network namespace for the module."""
    _skip_unless(netns_available())
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, netns: NetNamespace) -> Iterator[Orthanc]:
    """Orthanc in the module's namespace; stopped by PID at teardown, pass or fail."""
    _skip_unless(orthanc_available(), dcmtk_available("storescu"))
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), netns=netns)
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert not server.running


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """The test PKI."""
    _skip_unless(None if os.path.exists("/usr/bin/openssl") else "openssl CLI missing")
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def _send_to_orthanc(orthanc: Orthanc, phantom: PhantomSeries) -> None:
    result = storescu(
        phantom.folder, orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet,
        netns=orthanc.netns, timeout=20,
    )
    assert result.returncode == 0, result.stderr


# -- namespace ---------------------------------------------------------------


def test_namespace_is_private(netns: NetNamespace) -> None:
    assert os.readlink(netns.path) != os.readlink("/proc/self/ns/net")
    links = netns.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    ports = netns.free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p < 65536 for p in ports)
    assert netns.command(["true"]) == ["nsenter", f"--net=/proc/{netns.pid}/ns/net", "true"]


def test_namespace_listener_is_invisible_from_host(netns: NetNamespace) -> None:
    port = netns.free_port()
    with netns.entered():
        server = socket.create_server(("127.0.0.1", port))
    with server:
        assert port in netns.listening_ports()
        # The listening socket lives in the namespace although this thread created it.
        client = netns.run(
            ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
            capture_output=True, timeout=10,
        )
        assert client.returncode == 0, client.stderr
        conn, _ = server.accept()
        conn.close()
    assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")


def test_free_local_port_is_bindable() -> None:
    port = free_local_port()
    with socket.create_server(("127.0.0.1", port)) as sock:
        assert sock.getsockname()[1] == port


# -- Orthanc -------------------------------------------------------------------


def test_orthanc_runs_inside_namespace(orthanc: Orthanc) -> None:
    assert orthanc.pid is not None
    assert os.readlink(f"/proc/{orthanc.pid}/ns/net") == os.readlink(orthanc.netns.path)
    assert Path(f"/proc/{orthanc.pid}/exe").resolve().name == "Orthanc"
    system = orthanc.rest_get("/system")
    assert system["DicomAet"] == "ORTHANC" and system["DicomPort"] == orthanc.dicom_port
    assert {orthanc.dicom_port, orthanc.http_port} <= orthanc.netns.listening_ports()
    with pytest.raises(PeerHTTPError) as err:
        orthanc.rest_get("/instances/does-not-exist")
    assert err.value.status == 404


def test_storescu_to_orthanc(orthanc: Orthanc, phantom: PhantomSeries) -> None:
    _send_to_orthanc(orthanc, phantom)
    n = len(phantom.paths)
    assert n == 6
    assert orthanc.count_instances() == n
    assert orthanc.series_uids() == {phantom.series_uid: n}
    assert orthanc.sop_instance_uids() == set(phantom.sop_instance_uids)
    tags = orthanc.instance_tags(orthanc.instances()[0])
    assert tags["SeriesInstanceUID"] == phantom.series_uid
    assert tags["StudyInstanceUID"] == phantom.study_uid
    assert len(orthanc.series()) == 1


def test_orthanc_overwrites_resent_instances(
    tmp_path: Path, orthanc: Orthanc, phantom: PhantomSeries
) -> None:
    _send_to_orthanc(orthanc, phantom)
    changed = pydicom.dcmread(phantom.paths[0])
    changed.SeriesDescription = "resent with a change"
    changed.save_as(tmp_path / "changed.dcm")
    result = storescu(tmp_path / "changed.dcm", orthanc.host, orthanc.dicom_port,
                      called_aet=orthanc.aet, netns=orthanc.netns, timeout=20)
    assert result.returncode == 0, result.stderr
    instance = orthanc.find_instance(str(changed.SOPInstanceUID))
    assert instance is not None
    assert orthanc.instance_tags(instance)["SeriesDescription"] == "resent with a change"
    assert orthanc.count_instances() == len(phantom.paths)
    assert orthanc.find_instance("1.2.3.4.5.6.7.8.9") is None


def test_orthanc_checks_called_aet(orthanc: Orthanc, phantom: PhantomSeries) -> None:
    echo = echoscu(orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet, netns=orthanc.netns)
    assert echo.returncode == 0, echo.stderr
    wrong = storescu(
        phantom.paths[0], orthanc.host, orthanc.dicom_port, called_aet="NOT_ORTHANC",
        netns=orthanc.netns, timeout=10,
    )
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stderr + wrong.stdout


def test_pynetdicom_echo_from_entered_namespace(orthanc: Orthanc) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="PYTEST")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    with orthanc.netns.entered():
        assoc = ae.associate(orthanc.host, orthanc.dicom_port, ae_title=orthanc.aet)
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()


def test_orthanc_stop_start_keeps_instances(orthanc: Orthanc, phantom: PhantomSeries) -> None:
    _send_to_orthanc(orthanc, phantom)
    first_pid = orthanc.pid
    orthanc.stop()
    assert not orthanc.running and orthanc.pid is None
    assert not {orthanc.dicom_port, orthanc.http_port} & orthanc.netns.listening_ports()
    down = echoscu(orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet,
                   netns=orthanc.netns, timeout=3)
    assert down.returncode != 0
    orthanc.start()
    assert orthanc.pid != first_pid
    assert orthanc.series_uids() == {phantom.series_uid: len(phantom.paths)}
    _send_to_orthanc(orthanc, phantom)
    assert orthanc.count_instances() == len(phantom.paths)


# -- DCMTK storescp ---------------------------------------------------------------


def test_storescp_receives_from_storescu(tmp_path: Path, phantom: PhantomSeries) -> None:
    _skip_unless(netns_available(), dcmtk_available("storescp"), dcmtk_available("storescu"))
    scp = StoreSCP(tmp_path / "received", aet="BENCHSCP")
    try:
        scp.start()
        assert scp.pid is not None
        assert os.readlink(f"/proc/{scp.pid}/ns/net") == os.readlink(scp.netns.path)
        result = storescu(phantom.folder, scp.host, scp.port, called_aet="BENCHSCP",
                          netns=scp.netns, timeout=20)
        assert result.returncode == 0, result.stderr
        files = scp.wait_for_files(len(phantom.paths), timeout=10)
        uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        assert uids == set(phantom.sop_instance_uids)
    finally:
        scp.close()
    assert not scp.running


# -- TLS -----------------------------------------------------------------------------


def _verify(tls: TLSMaterial, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(tls.ca_cert), str(cert)],
        capture_output=True, text=True, check=False,
    )


def test_tls_material_verifies(tls: TLSMaterial) -> None:
    assert _verify(tls, tls.server_cert).returncode == 0
    assert _verify(tls, tls.client_cert).returncode == 0
    rogue = _verify(tls, tls.rogue_client_cert)
    assert rogue.returncode != 0
    assert "unable to get local issuer certificate" in rogue.stdout + rogue.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", str(tls.server_cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san


def _handshake(tls: TLSMaterial, client_ctx: ssl.SSLContext) -> tuple[str, str]:
    """One TLS exchange over 127.0.0.1; return (server outcome, client outcome)."""
    outcome: queue.Queue[str] = queue.Queue()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server_ctx = server_ssl_context(tls)

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tconn:
                tconn.sendall(b"hello " + tconn.recv(16))
                outcome.put("ok")
        except (ssl.SSLError, OSError) as exc:
            outcome.put(f"error: {exc}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tconn:
                tconn.sendall(b"node")
                client = "ok" if tconn.recv(16) == b"hello node" else "no answer"
    except (ssl.SSLError, OSError) as exc:
        client = f"error: {exc}"
    finally:
        thread.join(10)
        server.close()
    return outcome.get(timeout=1), client


def test_tls_contexts_handshake(tls: TLSMaterial) -> None:
    assert _handshake(tls, client_ssl_context(tls)) == ("ok", "ok")
    server, client = _handshake(tls, client_ssl_context(tls, rogue=True))
    assert "certificate verify failed" in server and client != "ok"
    server, client = _handshake(tls, client_ssl_context(tls, with_client_cert=False))
    assert server.startswith("error") and client != "ok"


def test_tls_material_works_with_dcmtk(tmp_path: Path, tls: TLSMaterial) -> None:
    _skip_unless(netns_available(), dcmtk_available("storescp"), dcmtk_available("echoscu"))
    scp = StoreSCP(
        tmp_path / "tls-received",
        extra_args=["+tls", str(tls.server_key), str(tls.server_cert), "+cf", str(tls.ca_cert)],
    )
    try:
        scp.start()

        def echo(key: Path, cert: Path) -> subprocess.CompletedProcess[str]:
            return echoscu(
                scp.host, scp.port, called_aet=scp.aet, netns=scp.netns, timeout=10,
                extra_args=["+tls", str(key), str(cert), "+cf", str(tls.ca_cert)],
            )

        good = echo(tls.client_key, tls.client_cert)
        assert good.returncode == 0, good.stderr
        assert echo(tls.rogue_client_key, tls.rogue_client_cert).returncode != 0
        assert scp.running
    finally:
        scp.close()
