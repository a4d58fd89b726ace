"""Real PostgreSQL and Redis servers for tests: throwaway, on loopback, stopped by PID.

- :class:`PostgreSQL` makes a cluster with ``initdb`` in a fresh folder and
  runs the Debian ``postgres`` binary on 127.0.0.1 (of a namespace, if given)
  and on a Unix socket in that folder. As root it runs as the ``postgres``
  user (PostgreSQL refuses root).
- :class:`Redis` runs ``redis-server`` on 127.0.0.1 and a Unix socket, without
  persistence, so a stop and start loses every message (the broker outage
  the node must survive).

Unix sockets are files, so a test in the host namespace reaches a server that
node processes reach over TCP inside a :class:`tests.peers.NetNamespace`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.peers import (
    NetNamespace,
    _pdeathsig_prefix,
    _ServerProcess,
    free_local_port,
    stop_process,
)

__all__ = ["PostgreSQL", "Redis", "postgresql_available", "redis_available"]


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def postgresql_available() -> str | None:
    """None when a throwaway PostgreSQL cluster can run here, else the reason."""
    if _postgres_bin() is None:
        return "PostgreSQL server not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run the server as"
    return None


def redis_available() -> str | None:
    """None when ``redis-server`` can run here, else the reason."""
    if shutil.which("redis-server") is None:
        return "redis-server not found (apt-get install redis-server)"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when this process is root; dies with pytest."""
    if os.geteuid() != 0:
        return [*_pdeathsig_prefix(), *argv]
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups",
            "--pdeathsig=TERM", "--", *argv]


def _wait_for_socket(path: Path, proc: subprocess.Popen, what: str, log: Path,
                     timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


class _TempServer(_ServerProcess):
    """A server in a fresh folder of its own, on a free port of 127.0.0.1.

    Parameters
    ----------
    netns
        Namespace whose 127.0.0.1 it listens on; the host's when None.
    """

    _prefix = "segnode-server-"
    _log_name = "server.log"

    def __init__(self, netns: NetNamespace | None = None) -> None:
        self.netns = netns  # type: ignore[assignment]
        self._own_netns = False
        self.root = Path(tempfile.mkdtemp(prefix=self._prefix))
        self.log_path = self.root / self._log_name
        self.port = netns.free_port() if netns is not None else free_local_port()
        self._proc = None

    def _spawn(self, argv: list[str], socket_path: Path, what: str, timeout: float) -> None:
        """Start ``argv`` (in the namespace, if any) and wait for its Unix socket."""
        with self.log_path.open("ab") as log:
            popen = self.netns.popen if self.netns is not None else subprocess.Popen
            self._proc = popen(argv, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        _wait_for_socket(socket_path, self._proc, what, self.log_path, timeout)


class PostgreSQL(_TempServer):
    """A throwaway PostgreSQL cluster with one database, ``segnode``."""

    _prefix = "segnode-pg-"
    _log_name = "postgres.log"

    def __init__(self, netns: NetNamespace | None = None) -> None:
        super().__init__(netns)
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self._initialised = False

    @property
    def url(self) -> str:
        """TCP URL of the ``segnode`` database (from inside the namespace, if any)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/segnode"

    @property
    def socket_url(self) -> str:
        """The same database over the Unix socket (reachable from any namespace)."""
        return f"postgresql://postgres@/segnode?host={self.root}&port={self.port}"

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> PostgreSQL:
        """Initialise the cluster (first time), start the server, create ``segnode``."""
        bin_dir = _postgres_bin()
        assert bin_dir is not None, postgresql_available()
        self._chown(self.root)
        if not self._initialised:
            subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(self.data),
                                            "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                            "--no-instructions"]),
                           check=True, capture_output=True, timeout=120)
        argv = _as_server_user([str(bin_dir / "postgres"), "-D", str(self.data),
                                "-p", str(self.port), "-k", str(self.root),
                                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
        self._spawn(argv, self.root / f".s.PGSQL.{self.port}", "postgres", timeout)
        if not self._initialised:
            self.psql("CREATE DATABASE segnode", database="postgres")
            self._initialised = True
        return self

    def psql(self, sql: str, database: str = "segnode") -> str:
        """Run one SQL statement through the socket; its output (unaligned, no headers)."""
        result = subprocess.run(
            ["psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d",
             database, "-Atc", sql], capture_output=True, text=True, timeout=60, check=True)
        return result.stdout

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Redis(_TempServer):
    """A ``redis-server`` without persistence (a restart empties it)."""

    _prefix = "segnode-redis-"
    _log_name = "redis.log"

    def __init__(self, netns: NetNamespace | None = None) -> None:
        super().__init__(netns)
        self.socket = self.root / "redis.sock"

    @property
    def url(self) -> str:
        """TCP URL (from inside the namespace, if any)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The same server over its Unix socket (kombu's ``redis+socket://``)."""
        return f"redis+socket://{self.socket}"

    def start(self, timeout: float = 30.0) -> Redis:
        """Start the server (again after :meth:`stop`, empty)."""
        argv = [*_pdeathsig_prefix(), "redis-server", "--bind", "127.0.0.1",
                "--port", str(self.port), "--unixsocket", str(self.socket),
                "--unixsocketperm", "777", "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"]
        self._spawn(argv, self.socket, "redis-server", timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop by PID; the socket file goes with it."""
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
