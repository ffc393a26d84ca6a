"""A real HTTP object store on loopback for origin tests: serves a directory (listings,
``Range`` reads), and answers chosen paths with a chosen error status."""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _refused(self) -> bool:
        status = self.server.refuse.get(self.path.split("?")[0])
        if status is None:
            return False
        self.send_error(status)
        return True

    def do_GET(self) -> None:
        if self._refused():
            return
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            super().do_GET()
            return
        with open(path, "rb") as f:
            data = f.read()
        start = int(wanted[1])
        end = min(len(data), int(wanted[2]) + 1 if wanted[2] else len(data))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(max(0, end - start)))
        self.end_headers()
        self.wfile.write(data[start:end])


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up early (a range read it stopped) is no failure here


class HttpStore:
    """Serve ``root`` on 127.0.0.1 (a free port) until ``close``; ``refuse[path] = status``
    answers a GET of that URL path (e.g. ``/data/a.bin``) with the status instead (a HEAD,
    which fsspec's ``info`` sends, is still answered)."""

    def __init__(self, root: str) -> None:
        self.server = _Server(("127.0.0.1", 0), partial(_Handler, directory=root))
        self.server.refuse = {}
        self.refuse: dict[str, int] = self.server.refuse
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
