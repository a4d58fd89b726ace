"""Serve the web application from a thread of ``segnode serve`` (uvicorn)."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

__all__ = ["WebServer"]

logger = logging.getLogger(__name__)


class WebServer:
    """uvicorn on ``host:port`` in a daemon thread; :meth:`stop` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="segnode-web",
                                        daemon=True)
        self.address = f"http://{host}:{port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start serving; returns once the socket accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start on {self.address}")
            time.sleep(0.05)
        logger.info("dashboard and API on %s", self.address)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask uvicorn to finish and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
