"""Real DICOM peers for tests: network namespaces, Orthanc, DCMTK tools, TLS material.

Tests that talk to real third-party DICOM software use these helpers:

- :class:`NetNamespace` is a private network namespace (own loopback only) for
  servers that cannot bind to 127.0.0.1 alone; Orthanc 1.10 always listens on
  all interfaces and DCMTK's ``storescp`` has no bind option. Commands run in
  it through ``nsenter``; pytest itself stays in the host namespace (except
  inside :meth:`NetNamespace.entered`).
- :class:`Orthanc` runs the Debian ``Orthanc`` binary in such a namespace as a
  stand-in PACS (REST API for assertions, stop and start for "PACS down").
- :func:`storescu`, :func:`echoscu` and :class:`StoreSCP` wrap DCMTK (always
  with ``TCP_NODELAY=1``: DCMTK stalls on Nagle otherwise).
- :func:`make_tls_material` and :func:`client_ssl_context` build a test PKI
  with the ``openssl`` CLI.
- :func:`write_phantom_series` writes a tiny phantom MR or CT series.

Every ``*_available`` function returns ``None`` when the peer works here, or
a reason string for :func:`pytest.skip`. Every server is stopped by its PID.
A peer inside a namespace reaches "127.0.0.1" of that namespace only: a
program it must talk to (a node under test, a storescu) runs in the same
namespace (:meth:`NetNamespace.popen`, ``netns=`` arguments) or opens its
sockets inside :meth:`NetNamespace.entered`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DCMTK_ENV",
    "NetNamespace",
    "Orthanc",
    "PeerHTTPError",
    "PhantomSeries",
    "StoreSCP",
    "TLSMaterial",
    "client_ssl_context",
    "dcmtk_available",
    "dcmtk_env",
    "echoscu",
    "free_local_port",
    "make_tls_material",
    "netns_available",
    "orthanc_available",
    "server_ssl_context",
    "stop_process",
    "storescu",
    "write_phantom_series",
]

#: Environment additions for every DCMTK tool: without TCP_NODELAY=1 DCMTK
#: leaves Nagle's algorithm on and small PDUs wait for delayed ACKs.
DCMTK_ENV = {"TCP_NODELAY": "1"}

_CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"


# ---------------------------------------------------------------------------
# processes


def _pdeathsig_prefix(signame: str = "TERM") -> list[str]:
    """``setpriv --pdeathsig`` so a server dies with pytest (it execs: PID kept)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, f"--pdeathsig={signame}", "--"] if setpriv else []


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """Stop a process by its PID: SIGTERM, wait, then SIGKILL.

    Parameters
    ----------
    proc : subprocess.Popen or None
        The process; ``None`` or an already finished process is a no-op.
    timeout : float
        Seconds to wait after SIGTERM before SIGKILL.

    Returns
    -------
    int or None
        The exit status, ``None`` when there was no process.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def free_local_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 in the host namespace.

    Returns
    -------
    int
        The port (bound to 0, read, closed; a small race remains).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------
# network namespace


class PeerHTTPError(RuntimeError):
    """An HTTP request inside a namespace failed (``status`` None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NetNamespace:
    """A private network namespace with only its loopback interface up.

    A holder process (``unshare --net ... sleep infinity``) keeps the
    namespace alive; commands enter it with ``nsenter --net=/proc/PID/ns/net``
    (nsenter execs, so the PID of :meth:`popen` is the program's own).
    Usable as a context manager; :meth:`close` kills the holder by PID.
    Processes started inside keep running after :meth:`close`: stop them first.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the holder to bring its loopback up.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        argv = [
            *_pdeathsig_prefix("KILL"), "unshare", "--net", "--",
            "/bin/sh", "-c", "ip link set lo up && echo ready && exec sleep infinity",
        ]
        self._holder: subprocess.Popen | None = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert self._holder.stdout is not None
            # ``echo ready`` after ``ip link`` is the event; no polling needed.
            # A failing unshare/ip closes stdout, so readline returns "" then.
            line = _readline_with_timeout(self._holder.stdout, timeout)
            if line.strip() != b"ready":
                err = b""
                if self._holder.poll() is not None and self._holder.stderr is not None:
                    err = self._holder.stderr.read()
                raise RuntimeError(
                    f"network namespace holder failed (rc={self._holder.poll()}): "
                    f"{err.decode(errors='replace').strip() or line!r}"
                )
            if os.readlink(f"/proc/{self.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                raise RuntimeError("unshare --net did not create a new network namespace")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        """PID of the holder process."""
        if self._holder is None:
            raise RuntimeError("network namespace is closed")
        return self._holder.pid

    @property
    def path(self) -> str:
        """``/proc/PID/ns/net`` of the holder."""
        return f"/proc/{self.pid}/ns/net"

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """Return ``argv`` prefixed to run inside the namespace.

        Parameters
        ----------
        argv : sequence of str or path
            The program and its arguments.

        Returns
        -------
        list[str]
            ``["nsenter", "--net=/proc/PID/ns/net", *argv]``.
        """
        return ["nsenter", f"--net={self.path}", *map(str, argv)]

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside the namespace (``subprocess.Popen`` keywords)."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace (``subprocess.run`` keywords)."""
        return subprocess.run(self.command(argv), **kwargs)

    def free_ports(self, count: int) -> list[int]:
        """Choose ``count`` distinct free TCP ports on 127.0.0.1 inside the namespace.

        Parameters
        ----------
        count : int
            How many ports; all are bound at the same time, so they differ.

        Returns
        -------
        list[int]
            The ports (closed again; nothing else runs in a private namespace).
        """
        with self.entered(), contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(count)]
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
            return [sock.getsockname()[1] for sock in socks]

    def free_port(self) -> int:
        """Choose one free TCP port on 127.0.0.1 inside the namespace."""
        return self.free_ports(1)[0]

    def listening_ports(self) -> set[int]:
        """TCP ports in LISTEN state inside the namespace (read from ``/proc/PID/net``)."""
        ports: set[int] = set()
        for name in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{self.pid}/net/{name}").read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def wait_listening(
        self,
        ports: Sequence[int],
        *,
        timeout: float = 30.0,
        process: subprocess.Popen | None = None,
    ) -> None:
        """Wait until every port listens inside the namespace.

        Parameters
        ----------
        ports : sequence of int
            TCP ports that must be in LISTEN state.
        timeout : float
            Seconds before :class:`TimeoutError`.
        process : subprocess.Popen, optional
            The server expected to listen: fail at once when it exits.
        """
        deadline = time.monotonic() + timeout
        wanted = set(ports)
        while not wanted <= self.listening_ports():
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process {process.pid} exited with {process.returncode}")
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.listening_ports())
                raise TimeoutError(f"ports {missing} not listening after {timeout} s")
            time.sleep(0.02)

    def http_request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> bytes:
        """Make one HTTP request from inside the namespace (urllib on this thread, entered).

        Parameters
        ----------
        method : str
            ``GET``, ``POST``, ``PUT`` or ``DELETE``.
        url : str
            Address as seen inside the namespace (``http://127.0.0.1:PORT/...``).
        data : bytes, optional
            Request body for POST and PUT.
        content_type : str
            Content-Type of the body.
        timeout : float
            Seconds for the request.

        Returns
        -------
        bytes
            The response body.

        Raises
        ------
        PeerHTTPError
            On an HTTP error status (``status`` set) or no answer (``status`` None).
        """
        body = (data or b"") if method in ("POST", "PUT") else None
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with self.entered(), urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise PeerHTTPError(f"{method} {url}: {exc.code} {exc.read()[:2000]!r}",
                                exc.code) from exc
        except OSError as exc:
            raise PeerHTTPError(f"{method} {url}: 0 {type(exc).__name__}: {exc}") from exc

    def http_get_json(self, url: str, *, timeout: float = 30.0) -> Any:
        """GET ``url`` inside the namespace and decode the JSON answer."""
        return json.loads(self.http_request("GET", url, timeout=timeout))

    def http_post(
        self,
        url: str,
        data: bytes | str | Mapping[str, Any] | list[Any],
        *,
        timeout: float = 30.0,
    ) -> Any:
        """POST to ``url`` inside the namespace; return the decoded JSON answer.

        ``data`` as bytes is sent as is (application/octet-stream, e.g. a
        DICOM file to Orthanc's ``/instances``), str as UTF-8 text, dict or
        list as JSON. An empty answer decodes to ``None``.
        """
        if isinstance(data, bytes):
            body, ctype = data, "application/octet-stream"
        elif isinstance(data, str):
            body, ctype = data.encode(), "text/plain"
        else:
            body, ctype = json.dumps(data).encode(), "application/json"
        answer = self.http_request("POST", url, body, content_type=ctype, timeout=timeout)
        return json.loads(answer) if answer.strip() else None

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the *calling thread* into the namespace for the ``with`` block.

        Sockets created in the block (a pynetdicom ``associate`` or
        ``start_server``, an ``ssl`` client) belong to the namespace and keep
        working after the block, from any thread. Other threads are not
        affected. Uses ``setns(2)`` (needs CAP_SYS_ADMIN).
        """
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.path}: {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(own, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns back to own namespace: {os.strerror(err)}")
        finally:
            os.close(target)
            os.close(own)

    def close(self) -> None:
        """Kill the holder process by PID (idempotent)."""
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            for stream in (holder.stdout, holder.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _readline_with_timeout(stream: Any, timeout: float) -> bytes:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return stream.readline()


@functools.cache
def netns_available() -> str | None:
    """Check that private network namespaces work here.

    Returns
    -------
    str or None
        ``None`` when a namespace could be created, else the reason (for
        :func:`pytest.skip`).
    """
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (unshare --net, nsenter)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux / iproute2)"
    try:
        with NetNamespace() as ns:
            ns.run(["true"], check=True, capture_output=True, timeout=10)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    return None


# ---------------------------------------------------------------------------
# Orthanc


def orthanc_available() -> str | None:
    """Check that the Debian ``Orthanc`` binary and network namespaces are usable.

    Returns
    -------
    str or None
        ``None`` when Orthanc can run in a namespace, else the reason.
    """
    if shutil.which("Orthanc") is None:
        return "Orthanc binary not found (apt-get install orthanc)"
    return netns_available()


class _ServerProcess:
    """A server process in a namespace: PID, stop by PID, log tail, context manager.

    Subclasses set ``netns``, ``_own_netns``, ``log_path`` and ``_proc`` and
    define ``start()``, which returns ``self``.
    """

    netns: NetNamespace
    log_path: Path
    _own_netns: bool
    _proc: subprocess.Popen | None

    def start(self) -> Any:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """PID of the running server, else ``None``."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID (SIGTERM, wait, SIGKILL); its files are kept."""
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def close(self) -> None:
        """Stop the server and close the namespace if this object created it."""
        self.stop()
        if self._own_netns:
            self.netns.close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server's log."""
        return _tail(self.log_path, lines)


class Orthanc(_ServerProcess):
    """An Orthanc server in a private network namespace, as a stand-in PACS.

    The configuration is written to ``folder/orthanc.json``, storage and index
    live in ``folder/storage``, the log in ``folder/orthanc.log``. Ports are
    chosen once, so :meth:`stop` then :meth:`start` brings the same server
    back with its instances. Usable as a context manager (start, then close).

    Parameters
    ----------
    folder : pathlib.Path
        Working folder (created).
    netns : NetNamespace, optional
        Namespace to run in; a new one owned by this object when omitted.
    aet : str
        Orthanc's DICOM AE title; the called AE title is checked.
    modalities : mapping, optional
        ``DicomModalities``: name -> ``[AET, host, port]`` (hosts as seen
        inside the namespace).
    extra_config : mapping, optional
        Further configuration keys, applied last (e.g. DICOM TLS).
    startup_timeout : float
        Seconds :meth:`start` waits for the REST API to answer.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        folder: Path,
        *,
        netns: NetNamespace | None = None,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Sequence[str | int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own_netns = netns is None
        self.netns = netns if netns is not None else NetNamespace()
        self.aet = aet
        self.startup_timeout = startup_timeout
        self.dicom_port, self.http_port = self.netns.free_ports(2)
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"
        self.storage = self.folder / "storage"
        self.config: dict[str, Any] = {
            "Name": f"segnode-test-{aet}",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpThreadsCount": 4,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            "DicomScpTimeout": 5,
            "DicomScuTimeout": 5,
            "DicomAssociationCloseDelay": 0,
            "DicomThreadsCount": 4,
            "OverwriteInstances": True,
            "StableAge": 2,
            "SaveJobs": False,
            "JobsHistorySize": 10,
            "LoadPrivateDictionary": False,
            "CheckRevisions": False,
        }
        self.config.update(extra_config or {})
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API, valid inside the namespace."""
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> Orthanc:
        """Start Orthanc (again) and wait until its REST API and DICOM port answer.

        Returns
        -------
        Orthanc
            ``self``.

        Raises
        ------
        RuntimeError
            Orthanc exited or did not become ready in time; the message has
            the tail of its log.
        """
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.config, indent=2))
        with self.log_path.open("ab") as log:
            self._proc = self.netns.popen(
                [*_pdeathsig_prefix(), "Orthanc", "--no-jobs", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self.netns.wait_listening(
                [self.dicom_port, self.http_port], timeout=self.startup_timeout,
                process=self._proc,
            )
            while True:
                try:
                    self.rest_get("/system", timeout=5)
                    break
                except PeerHTTPError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except (RuntimeError, TimeoutError) as exc:
            stop_process(self._proc)
            raise RuntimeError(
                f"Orthanc did not start: {exc}\n--- {self.log_path} ---\n{self.log_tail()}"
            ) from exc
        return self

    def rest_get(self, path: str, *, timeout: float = 30.0) -> Any:
        """GET a REST path (``/system``) and decode the JSON answer."""
        return self.netns.http_get_json(self.url + path, timeout=timeout)

    def rest_post(self, path: str, data: Any, *, timeout: float = 30.0) -> Any:
        """POST to a REST path; see :meth:`NetNamespace.http_post`."""
        return self.netns.http_post(self.url + path, data, timeout=timeout)

    def rest_delete(self, path: str, *, timeout: float = 30.0) -> None:
        """DELETE a REST resource (``/instances/ID``)."""
        self.netns.http_request("DELETE", self.url + path, timeout=timeout)

    def instances(self) -> list[str]:
        """Orthanc identifiers of all stored instances."""
        return list(self.rest_get("/instances"))

    def series(self) -> list[str]:
        """Orthanc identifiers of all stored series."""
        return list(self.rest_get("/series"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Tags of one instance by keyword (``/instances/ID/simplified-tags``)."""
        return dict(self.rest_get(f"/instances/{instance_id}/simplified-tags"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of one instance."""
        return self.netns.http_request("GET", f"{self.url}/instances/{instance_id}/file")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc identifier of the instance with this SOPInstanceUID, else ``None``."""
        for hit in self.rest_post("/tools/lookup", sop_instance_uid):
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def count_instances(self) -> int:
        """Number of stored instances (``/statistics``)."""
        return int(self.rest_get("/statistics")["CountInstances"])

    def series_uids(self) -> dict[str, int]:
        """SeriesInstanceUID -> number of stored instances, for every series."""
        out: dict[str, int] = {}
        for item in self.rest_get("/series?expand"):
            out[item["MainDicomTags"]["SeriesInstanceUID"]] = len(item["Instances"])
        return out

    def sop_instance_uids(self) -> set[str]:
        """SOPInstanceUID of every stored instance."""
        return {
            item["MainDicomTags"]["SOPInstanceUID"] for item in self.rest_get("/instances?expand")
        }

    def wait_for_instances(self, count: int, *, timeout: float = 30.0) -> int:
        """Poll until at least ``count`` instances are stored.

        Returns
        -------
        int
            The number stored when the wait ended.

        Raises
        ------
        TimeoutError
            Fewer than ``count`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (n := self.count_instances()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc has {n} instances, expected {count}")
            time.sleep(0.1)
        return n



def poll_until(check: Callable[[], Any], timeout: float, interval: float) -> Any:
    """Call ``check`` every ``interval`` s until it returns something truthy; that, or None.

    None (or the last falsy value) means ``timeout`` seconds passed; the caller
    says what it was waiting for.
    """
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value

# ---------------------------------------------------------------------------
# DCMTK


def dcmtk_tool(tool: str) -> str | None:
    """The path of DCMTK's ``tool``: the first native binary of that name on PATH.

    pynetdicom installs Python scripts called ``storescu``, ``storescp`` and
    ``echoscu`` into the venv; those are skipped.
    """
    for folder in os.get_exec_path():
        candidate = Path(folder) / tool
        try:
            with candidate.open("rb") as handle:
                native = handle.read(4) == b"\x7fELF"
        except OSError:
            continue
        if native and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def dcmtk_available(tool: str = "storescu") -> str | None:
    """Check that a DCMTK tool is installed.

    Parameters
    ----------
    tool : str
        ``storescu``, ``storescp``, ``echoscu``, ...

    Returns
    -------
    str or None
        ``None`` when found on PATH, else the reason.
    """
    if dcmtk_tool(tool) is None:
        return f"DCMTK {tool} not found (apt-get install dcmtk)"
    return None


def dcmtk_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a DCMTK tool: ``base`` (default ``os.environ``) plus TCP_NODELAY=1."""
    return {**(os.environ if base is None else base), **DCMTK_ENV}


def _net_timeouts(timeout: float) -> list[str]:
    secs = str(max(1, int(timeout)))
    return ["-to", secs, "-ta", secs, "-td", secs]


def _run_dcmtk(
    argv: list[str], netns: NetNamespace | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    cmd = netns.command(argv) if netns is not None else argv
    return subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout + 15, check=False,
    )


def storescu(
    files_or_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    host: str,
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "STORESCU",
    netns: NetNamespace | None = None,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send DICOM files with DCMTK ``storescu`` in one association.

    Parameters
    ----------
    files_or_dir : path or sequence of paths
        Files and/or folders; folders are scanned recursively (``+sd +r``).
    host, port : str, int
        The peer.
    called_aet, calling_aet : str
        AE titles (``-aec``, ``-aet``).
    netns : NetNamespace, optional
        Run inside this namespace (to reach a peer there).
    timeout : float
        DCMTK connection/ACSE/DIMSE timeouts in seconds; the process gets 15 s more.
    extra_args : sequence of str
        More options (``-xs``, ``+tls KEY CERT``, ``-v``...), placed before the peer.

    Returns
    -------
    subprocess.CompletedProcess
        Return code 0 when every store succeeded; stdout/stderr as text.
    """
    if isinstance(files_or_dir, (str, os.PathLike)):
        files_or_dir = [files_or_dir]
    argv = [
        dcmtk_tool("storescu") or "storescu", "-aet", calling_aet, "-aec", called_aet,
        "+sd", "+r",
        *_net_timeouts(timeout), *extra_args, host, str(port), *map(str, files_or_dir),
    ]
    return _run_dcmtk(argv, netns, timeout)


def echoscu(
    host: str,
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "ECHOSCU",
    netns: NetNamespace | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send a C-ECHO with DCMTK ``echoscu``; return code 0 on success.

    Parameters are as for :func:`storescu`.
    """
    argv = [
        dcmtk_tool("echoscu") or "echoscu", "-aet", calling_aet, "-aec", called_aet,
        *_net_timeouts(timeout),
        *extra_args, host, str(port),
    ]
    return _run_dcmtk(argv, netns, timeout)


class StoreSCP(_ServerProcess):
    """DCMTK ``storescp`` writing received objects to a folder, for comparisons.

    ``storescp`` 3.6.7 has no option to bind one address (it listens on all
    interfaces), so it always runs in a network namespace and listens on
    that namespace's 127.0.0.1 only. Senders run in the same namespace
    (``storescu(..., netns=scp.netns)``, :meth:`NetNamespace.entered`).
    Usable as a context manager (start, then close).

    Parameters
    ----------
    folder : pathlib.Path
        Output folder (``-od``, created).
    aet : str
        AE title (``-aet``).
    netns : NetNamespace, optional
        Namespace to run in; a new one owned by this object when omitted.
    port : int, optional
        Port inside the namespace; a free one when omitted.
    fork : bool
        ``--fork``: one child process per association (parallel senders).
    extra_args : sequence of str
        More options (``--ignore``, ``+tls KEY CERT``, ``-v``...).
    log_path : pathlib.Path, optional
        Where stdout/stderr go; ``folder/../storescp-<port>.log`` by default.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        folder: Path,
        *,
        aet: str = "STORESCP",
        netns: NetNamespace | None = None,
        port: int | None = None,
        fork: bool = False,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self._own_netns = netns is None
        self.netns = netns if netns is not None else NetNamespace()
        self.port = port if port is not None else self.netns.free_port()
        self.fork = fork
        self.extra_args = list(extra_args)
        self.log_path = log_path or self.folder.parent / f"storescp-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> StoreSCP:
        """Start storescp and wait until its port listens.

        Returns
        -------
        StoreSCP
            ``self``.
        """
        if self.running:
            return self
        argv = [
            *_pdeathsig_prefix(), dcmtk_tool("storescp") or "storescp", "-aet", self.aet,
            "-od", str(self.folder),
            "-dhl", *(["--fork"] if self.fork else []), *self.extra_args, str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self._proc = self.netns.popen(
                argv, env=dcmtk_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.netns.wait_listening([self.port], timeout=timeout, process=self._proc)
        except (RuntimeError, TimeoutError) as exc:
            stop_process(self._proc)
            raise RuntimeError(
                f"storescp did not start: {exc}\n--- {self.log_path} ---\n{self.log_tail()}"
            ) from exc
        return self

    def received_files(self) -> list[Path]:
        """Files written so far (the last may be partial while an association runs)."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def wait_for_files(self, count: int, *, timeout: float = 30.0) -> list[Path]:
        """Poll until at least ``count`` files were received; :class:`TimeoutError` else."""
        deadline = time.monotonic() + timeout
        while len(files := self.received_files()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"storescp received {len(files)} files, expected {count}")
            time.sleep(0.05)
        return files


# ---------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files of a test PKI (keys unencrypted).

    ``server_cert`` (CN=localhost, SAN IP:127.0.0.1 and DNS:localhost) and
    ``client_cert`` are signed by ``ca_cert``; ``rogue_client_cert`` is signed
    by another CA (``rogue_ca_cert``) and must be refused by a peer trusting
    ``ca_cert`` only.
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=60, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {proc.stderr.strip()}")


def _make_ca(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", key, "-out", cert,
        "-days", "3650", "-subj", f"/O=segnode tests/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )
    return cert, key


def _make_leaf(
    folder: Path, name: str, cn: str, ca: tuple[Path, Path], extensions: str, serial: int
) -> tuple[Path, Path]:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n" + extensions
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-noenc", "-keyout", key, "-out", csr,
        "-subj", f"/O=segnode tests/CN={cn}",
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(serial),
        "-days", "825", "-sha256", "-extfile", ext, "-out", cert,
    )
    csr.unlink()
    ext.unlink()
    return cert, key


def make_tls_material(folder: Path) -> TLSMaterial:
    """Create a CA, server and client certificates, and a rogue client, with ``openssl``.

    Parameters
    ----------
    folder : pathlib.Path
        Output folder (created).

    Returns
    -------
    TLSMaterial
        Paths of the PEM files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(folder, "ca", "segnode test CA")
    server = _make_leaf(
        folder, "server", "localhost", ca,
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        serial=2,
    )
    client_ext = (
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    client = _make_leaf(folder, "client", "segnode-test-client", ca, client_ext, serial=3)
    rogue_ca = _make_ca(folder, "rogue-ca", "rogue CA")
    rogue = _make_leaf(folder, "rogue-client", "rogue-client", rogue_ca, client_ext, serial=4)
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return TLSMaterial(
        folder=folder, ca_cert=ca[0], ca_key=ca[1], server_cert=server[0], server_key=server[1],
        client_cert=client[0], client_key=client[1], rogue_ca_cert=rogue_ca[0],
        rogue_client_cert=rogue[0], rogue_client_key=rogue[1],
    )


def client_ssl_context(
    material: TLSMaterial, *, with_client_cert: bool = True, rogue: bool = False
) -> ssl.SSLContext:
    """TLS client context trusting the test CA, for ``ae.associate(tls_args=(ctx, "localhost"))``.

    Parameters
    ----------
    material : TLSMaterial
        The test PKI.
    with_client_cert : bool
        Present a client certificate (needed by servers that require one).
    rogue : bool
        Present the rogue client certificate (signed by an untrusted CA).

    Returns
    -------
    ssl.SSLContext
        Verifies the server against ``material.ca_cert`` with hostname checks.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(material.ca_cert))
    if rogue:
        ctx.load_cert_chain(str(material.rogue_client_cert), str(material.rogue_client_key))
    elif with_client_cert:
        ctx.load_cert_chain(str(material.client_cert), str(material.client_key))
    return ctx


def server_ssl_context(
    material: TLSMaterial, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """TLS server context with the test server certificate (e.g. a pynetdicom SCP).

    Parameters
    ----------
    material : TLSMaterial
        The test PKI.
    require_client_cert : bool
        Require a client certificate signed by ``material.ca_cert``.

    Returns
    -------
    ssl.SSLContext
        For ``ae.start_server(..., ssl_context=ctx)``.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(material.ca_cert))
    ctx.load_cert_chain(str(material.server_cert), str(material.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------------------
# phantom series


@dataclass(frozen=True)
class PhantomSeries:
    """A phantom series written to disk."""

    folder: Path
    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_instance_uids: list[str]


def write_phantom_series(
    folder: Path,
    *,
    modality: str = "MR",
    uid_seed: str | None = None,
    fov_mm: tuple[float, float, float] = (48.0, 64.0, 64.0),
    spacing_mm: tuple[float, float, float] = (8.0, 8.0, 8.0),
    orientation: str = "axial",
    seed: int = 7,
    series_number: int = 1,
) -> PhantomSeries:
    """Write a small axial phantom series (6 slices of 8 x 8 by default).

    Parameters
    ----------
    folder : pathlib.Path
        Output folder (created).
    modality : {"MR", "CT"}
        Image type; CT is stored with rescale (1, -1024).
    uid_seed : str, optional
        Derive the UIDs from this string (same seed, same UIDs); fresh UIDs
        when omitted.
    fov_mm, spacing_mm : tuple of float
        Field of view and voxel spacing along (slice, row, column) in mm.
    orientation : str
        Grid orientation (see :func:`model.phantom.make_grid`).
    seed : int
        Phantom and noise seed.
    series_number : int
        SeriesNumber.

    Returns
    -------
    PhantomSeries
        Folder, file paths and UIDs.
    """
    import numpy as np
    import pydicom

    from dicom_io.phantom_series import write_series
    from model.phantom import Phantom, make_grid

    rng = np.random.default_rng(seed)
    grid = make_grid(orientation, spacing_mm, fov_mm=fov_mm, rng=rng)  # type: ignore[arg-type]
    image, _ = Phantom(seed=seed).sample(grid, modality=modality, rng=rng)  # type: ignore[arg-type]
    paths = write_series(
        image, Path(folder), modality=modality, series_number=series_number,  # type: ignore[arg-type]
        uid_seed=uid_seed, rescale=(1.0, -1024.0) if modality == "CT" else None,
        series_description="peers phantom",
    )
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return PhantomSeries(
        folder=Path(folder), paths=list(paths), study_uid=str(headers[0].StudyInstanceUID),
        series_uid=str(headers[0].SeriesInstanceUID),
        sop_instance_uids=[str(h.SOPInstanceUID) for h in headers],
    )
