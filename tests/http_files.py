"""A real HTTP file server for tests: Basic auth and signed-query checks, byte ranges (what fsspec and
pyarrow read with), and a log of every request so a test can tell the credentials were used."""

from __future__ import annotations

import base64
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class ServedFiles:
    root: Path
    user: str
    password: str
    query_name: str
    query_values: Collection[str]
    requests: list[tuple[str, int]] = field(default_factory=list)

    def authorized(self, header: str | None, query: str) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == expected and any(
            value in self.query_values for value in parse_qs(query).get(self.query_name, [])
        )


def _handler(served: ServedFiles) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - the http.server protocol
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            parts = urlsplit(self.path)
            path = served.root / parts.path.lstrip("/")
            if not served.authorized(self.headers.get("Authorization"), parts.query):
                self._status(401)
                return
            if not path.is_file():
                self._status(404)
                return
            data = path.read_bytes()
            start, end, status = 0, len(data), 200
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes="):
                first, _, last = ranged.removeprefix("bytes=").partition("-")
                start = int(first) if first else max(0, len(data) - int(last))
                end = min(len(data), int(last) + 1) if first and last else len(data)
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            served.requests.append((parts.path, status))
            if body:
                self.wfile.write(data[start:end])

        def _status(self, status: int) -> None:
            served.requests.append((urlsplit(self.path).path, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    return Handler


@contextmanager
def serving(served: ServedFiles) -> Iterator[str]:
    """Serve ``served.root`` on 127.0.0.1; yields ``host:port``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
