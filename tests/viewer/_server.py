"""One-origin HTTP server for OHIF: static ``dist/`` plus a reverse proxy to Orthanc.

Run as a script inside the test's network namespace (stdlib only)::

    python _server.py --port P --dist DIST --app-config FILE --upstream http://127.0.0.1:Q

- ``/app-config.js`` is the test's own configuration file;
- ``/dicom-web/...`` and ``/wado...`` are forwarded to ``--upstream`` (Orthanc
  with its DICOMweb plugin), the ``Host`` header kept so that the plugin's
  BulkDataURIs point back at this server;
- any other path is a file of ``dist/``, and unknown paths fall back to
  ``index.html`` (OHIF routes such as ``/viewer`` are client-side).

It binds 127.0.0.1 only and prints ``listening`` once the socket is bound.
"""

from __future__ import annotations

import argparse
import http.client
import mimetypes
import posixpath
import sys
import urllib.parse
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROXIED = ("/dicom-web", "/wado")
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "content-length",
}
TYPES = {".js": "application/javascript", ".mjs": "application/javascript",
         ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
         ".woff2": "font/woff2"}


class Handler(BaseHTTPRequestHandler):
    """Static files with SPA fallback, and a buffering reverse proxy."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, dist: Path, app_config: Path, upstream: str, **kwargs) -> None:
        self.dist = dist
        self.app_config = app_config
        self.upstream = urllib.parse.urlsplit(upstream)
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send_file(self.app_config)
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        rel = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
        target = (self.dist / rel).resolve() if rel not in ("", ".") else self.dist / "index.html"
        if not target.is_relative_to(self.dist) or not target.is_file():
            target = self.dist / "index.html"
        self._send_file(target)

    def _send_file(self, target: Path) -> None:
        body = target.read_bytes()
        ctype = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        self.send_response(200)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self.send_error(502, f"upstream: {exc}")
            return
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dist", type=Path, required=True)
    parser.add_argument("--app-config", type=Path, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    handler = partial(Handler, dist=args.dist.resolve(), app_config=args.app_config,
                      upstream=args.upstream)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    print("listening", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
