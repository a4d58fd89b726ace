"""TLS matrix: what the listener's TLS port and segnode's SCU accept and refuse.

The real :class:`node.listener.Listener` runs with ``node.tls`` (test PKI from
``openssl``) on 127.0.0.1. Python's ``ssl`` client tries protocol versions,
weak cipher suites and client certificates (none, another CA's, expired);
DCMTK's ``echoscu +tls`` tries the same port when installed. Then
:func:`node.scu.echo` talks to pynetdicom SCPs with an expired server
certificate, one from another CA and one for another host name: each must
be refused, a valid one accepted. One row per case.

Run: ``python -m harden.run_all --only tls_matrix [--budget short|long]``.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from harden.results import CheckResult
from node.catalogue import Catalogue
from node.config import DestinationConfig, ListenerConfig, NodeConfig
from node.listener import Listener, server_ssl_context
from node.receiver import Receiver
from node.scu import SendFailure, echo
from node.spool import Quarantine, Spool
from tests.peers import TLSMaterial, free_local_port, make_tls_material

__all__ = ["run"]

#: Weak suites tried against the TLS 1.2 port (short budget: one of each family).
_WEAK_SHORT = ("RC4-SHA", "ECDHE-RSA-RC4-SHA", "DES-CBC3-SHA", "ECDHE-RSA-DES-CBC3-SHA",
               "NULL-SHA256", "ECDHE-RSA-NULL-SHA", "EXP-RC4-MD5", "EXP-DES-CBC-SHA",
               "ECDHE-RSA-AES128-SHA", "AES128-SHA", "ECDHE-RSA-AES128-SHA256",
               "AES128-GCM-SHA256", "ADH-AES128-GCM-SHA256", "AECDH-AES128-SHA")
_CALLER = "SCANNER"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], capture_output=True, check=True, timeout=60)


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], san: str, days: int,
          usage: str = "serverAuth") -> tuple[Path, Path]:
    """An EC leaf certificate signed by ``ca``; ``days`` of -1 makes it expired."""
    cert, key, csr, ext = (folder / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(f"basicConstraints=critical,CA:FALSE\nextendedKeyUsage={usage}\n"
                   + (f"subjectAltName={san}\n" if san else ""))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-noenc", "-keyout", key, "-out", csr, "-subj", f"/O=segnode harden/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
             str(int.from_bytes(name.encode()[:7], "big")), "-days", str(days), "-sha256",
             "-extfile", ext, "-out", cert)
    return cert, key


class _Pki:
    """The test PKI plus the expired and mismatched certificates of this matrix."""

    def __init__(self, folder: Path) -> None:
        self.m: TLSMaterial = make_tls_material(folder)
        ca = (self.m.ca_cert, self.m.ca_key)
        rogue_key = self.m.rogue_ca_cert.with_suffix(".key")
        self.expired_client = _leaf(folder, "expired-client", ca, "", -1, "clientAuth")
        self.expired_server = _leaf(folder, "expired-server", ca, "IP:127.0.0.1", -1)
        self.rogue_server = _leaf(folder, "rogue-server", (self.m.rogue_ca_cert, rogue_key),
                                  "IP:127.0.0.1", 30)
        self.other_host = _leaf(folder, "other-host", ca, "DNS:other.example", 30)

    def client(self, cert: tuple[Path, Path] | None = None, *,
               version: ssl.TLSVersion | None = None, ciphers: str | None = None
               ) -> ssl.SSLContext:
        """A client context trusting the CA, presenting ``cert`` (default: the good one)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.m.ca_cert))
        if version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ctx.maximum_version = version
                ctx.set_ciphers("ALL:@SECLEVEL=0")
        if ciphers is not None:
            ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx


@contextmanager
def _listener(root: Path, pki: _Pki) -> Iterator[int]:
    """The real listener with ``node.tls`` (client certificates required); yields its TLS port."""
    port = free_local_port()
    config = NodeConfig(
        node={"ae_title": "SEGNODE", "port": free_local_port(), "acse_timeout_s": 5,
              "tls": {"port": port, "certificate": pki.m.server_cert,
                      "private_key": pki.m.server_key, "ca_certificates": pki.m.ca_cert}},
        callers=[{"ae_title": _CALLER, "addresses": ["127.0.0.1"]}],
        storage={"spool_dir": root / "spool", "quarantine_dir": root / "quarantine",
                 "output_dir": root / "out", "min_free_disk_mb": 0},
        database={"url": f"sqlite:///{root}/c.db"})
    catalogue = Catalogue(config.database_url)
    receiver = Receiver(Spool(config.storage.spool_dir),
                        Quarantine(config.storage.quarantine_dir), catalogue)
    listener = Listener(config, receiver)
    listener.start()
    try:
        yield port
    finally:
        listener.stop()
        catalogue.close()


def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[bool, str]:
    """(established, what happened) of one TLS handshake plus a read of the server's answer.

    A TLS 1.3 server refuses a client certificate after the handshake, so a
    short read follows: an alert or a closed socket is a refusal, silence
    (the server waiting for an A-ASSOCIATE-RQ) is acceptance.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            what = f"{tls.version()} {tls.cipher()[0]}"
            tls.settimeout(0.3)
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False
            return (False, f"{what}, then closed") if closed else (True, what)
    except (ssl.SSLError, OSError) as exc:
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"


def _row(check: str, outcomes: list[tuple[bool, str]], want: bool) -> CheckResult:
    bad = [what for ok, what in outcomes if ok != want]
    figure = ("accepted: " if want else "refused: ") + (outcomes[0][1] if outcomes else "-")
    return CheckResult(check, len(outcomes), len(bad), figure,
                       [f"{'refused' if want else 'accepted'}: {b}" for b in bad])


def _weak_ciphers(port: int, pki: _Pki, budget: str) -> CheckResult:
    """Each weak suite this OpenSSL can offer must fail; the server must list none."""
    if budget == "long":
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
        names = [c["name"] for c in probe.get_ciphers()
                 if c["protocol"] != "TLSv1.3" and not ("PSK" in c["name"] or "SRP" in c["name"])]
    else:
        names = list(_WEAK_SHORT)
    offered = server_ssl_context(_tls_settings(pki))
    strong = {c["name"] for c in offered.get_ciphers() if c["protocol"] != "TLSv1.3"}
    findings = [f"server offers non-AEAD or no forward secrecy: {n}" for n in strong
                if not (n.startswith(("ECDHE-", "DHE-")) and ("GCM" in n or "CHACHA20" in n))]
    tried, absent = 0, []
    for name in names:
        if name in strong:
            continue
        try:
            ctx = pki.client((pki.m.client_cert, pki.m.client_key),
                             version=ssl.TLSVersion.TLSv1_2, ciphers=name)
        except ssl.SSLError:
            absent.append(name)
            continue
        tried += 1
        ok, what = _handshake(port, ctx)
        if ok:
            findings.append(f"{name} accepted ({what})")
    figure = (f"{tried} suites refused, {len(absent)} not in this OpenSSL; server TLS 1.2 "
              f"suites: {', '.join(sorted(strong))}")
    return CheckResult("tls: weak cipher suites refused", tried + 1, len(findings), figure,
                       findings)


def _tls_settings(pki: _Pki) -> object:
    return ListenerConfig(tls={"port": 1, "certificate": pki.m.server_cert,
                               "private_key": pki.m.server_key,
                               "ca_certificates": pki.m.ca_cert}).tls


def _options(pki: _Pki) -> CheckResult:
    ctx = server_ssl_context(_tls_settings(pki))
    wanted = {"no compression": ssl.OP_NO_COMPRESSION,
              "no renegotiation": ssl.OP_NO_RENEGOTIATION}
    missing = [name for name, flag in wanted.items() if not ctx.options & flag]
    if ctx.minimum_version < ssl.TLSVersion.TLSv1_2:
        missing.append(f"minimum version {ctx.minimum_version.name}")
    if ctx.verify_mode != ssl.CERT_REQUIRED:
        missing.append("client certificates not required with ca_certificates")
    return CheckResult("tls: server context options", 4, len(missing),
                       "min TLS 1.2, no compression, no renegotiation, client cert required",
                       missing)


def _dicom_echo(port: int, ctx: ssl.SSLContext) -> tuple[bool, str]:
    """(C-ECHO answered Success, what happened) over TLS through pynetdicom."""
    ae = AE(ae_title=_CALLER)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE", tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return False, "association not established"
    try:
        tls = assoc.dul.socket.socket
        what = f"{tls.version()} {tls.cipher()[0]}, C-ECHO"
        status = assoc.send_c_echo()
        return bool(status and status.Status == 0), what
    finally:
        assoc.release()


def _dcmtk(port: int, pki: _Pki) -> list[CheckResult]:
    """``echoscu +tls``: the client certificate accepted, none or another CA's refused."""
    tool = shutil.which("echoscu")
    help_text = subprocess.run([tool, "--help"], capture_output=True, text=True,
                               timeout=30).stdout if tool else ""
    if "--enable-tls" not in help_text:
        reason = "echoscu not installed" if not tool else "this DCMTK build has no TLS"
        return [CheckResult("dcmtk: echoscu +tls", 0, 0, f"not run: {reason}")]
    base = [tool, "-aet", _CALLER, "-aec", "SEGNODE", "-to", "5", "-ta", "5",
            "+cf", str(pki.m.ca_cert)]
    cases = [("dcmtk: echoscu +tls with the client certificate", True,
              ["+tls", str(pki.m.client_key), str(pki.m.client_cert)]),
             ("dcmtk: echoscu anonymous TLS (no certificate) refused", False, ["+tla"]),
             ("dcmtk: echoscu +tls with another CA's certificate refused", False,
              ["+tls", str(pki.m.rogue_client_key), str(pki.m.rogue_client_cert)])]
    rows = []
    for check, want, args in cases:
        proc = subprocess.run([*base, *args, "127.0.0.1", str(port)], capture_output=True,
                              text=True, timeout=60)
        last = (proc.stderr.strip().splitlines() or ["exit 0"])[-1][:120]
        rows.append(_row(check, [(proc.returncode == 0, f"exit {proc.returncode}: {last}")],
                         want))
    return rows


@contextmanager
def _peer(cert: tuple[Path, Path]) -> Iterator[int]:
    """A pynetdicom Verification SCP with TLS and ``cert``; yields its port."""
    ae = AE(ae_title="PEER")
    ae.add_supported_context(Verification)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    port = free_local_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ctx)
    try:
        yield port
    finally:
        server.shutdown()


def _scu_rows(pki: _Pki, repeats: int) -> list[CheckResult]:
    """segnode's own SCU (destinations with TLS) verifies the server's certificate."""
    node = ListenerConfig(acse_timeout_s=5, dimse_timeout_s=5, network_timeout_s=5)
    cases = [("scu: valid server certificate accepted", (pki.m.server_cert, pki.m.server_key),
              True),
             ("scu: expired server certificate refused", pki.expired_server, False),
             ("scu: server certificate from another CA refused", pki.rogue_server, False),
             ("scu: server certificate for another host refused", pki.other_host, False)]
    rows = []
    for check, cert, want in cases:
        outcomes = []
        with _peer(cert) as port:
            dest = DestinationConfig(name="peer", ae_title="PEER", host="127.0.0.1",
                                     port=port, tls={"ca_certificates": pki.m.ca_cert})
            for _ in range(repeats):
                try:
                    echo(dest, node)
                    outcomes.append((True, "C-ECHO answered"))
                except SendFailure as exc:
                    outcomes.append((False, str(exc)[:100]))
        rows.append(_row(check, outcomes, want))
    return rows


def run(budget: str = "short") -> list[CheckResult]:
    """The TLS matrix; ``long`` repeats each case and tries every weak suite of this OpenSSL."""
    repeats = 1 if budget == "short" else 5
    with tempfile.TemporaryDirectory(prefix="segnode-tls-") as tmp:
        root = Path(tmp)
        pki = _Pki(root / "pki")
        good = (pki.m.client_cert, pki.m.client_key)
        with _listener(root / "node", pki) as port:
            def many(ctx: ssl.SSLContext) -> list[tuple[bool, str]]:
                return [_handshake(port, ctx) for _ in range(repeats)]

            rows = [
                _row("tls: TLS 1.0 refused", many(pki.client(
                    good, version=ssl.TLSVersion.TLSv1)), False),
                _row("tls: TLS 1.1 refused", many(pki.client(
                    good, version=ssl.TLSVersion.TLSv1_1)), False),
                _row("tls: TLS 1.2 accepted (C-ECHO)", [_dicom_echo(port, pki.client(
                    good, version=ssl.TLSVersion.TLSv1_2)) for _ in range(repeats)], True),
                _row("tls: TLS 1.3 accepted (C-ECHO)", [_dicom_echo(port, pki.client(
                    good, version=ssl.TLSVersion.TLSv1_3)) for _ in range(repeats)], True),
                _weak_ciphers(port, pki, budget),
                _options(pki),
            ]
            for check, cert in (("no client certificate", None),
                                ("client certificate from another CA",
                                 (pki.m.rogue_client_cert, pki.m.rogue_client_key)),
                                ("expired client certificate", pki.expired_client)):
                for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                    name = f"tls: {check} refused (TLS {version.name[4:].replace('_', '.')})"
                    ctx = pki.client(cert, version=version)
                    rows.append(_row(name, many(ctx) + [_dicom_echo(port, ctx)], False))
            rows += _dcmtk(port, pki)
        rows += _scu_rows(pki, repeats)
    return rows
