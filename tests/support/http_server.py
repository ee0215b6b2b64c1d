"""A loopback HTTP server that serves fixed bodies and counts hits."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class StaticServer:
    """Serves ``routes[path] = (content_type, body)``; ``hits`` counts requests per path."""

    routes: dict[str, tuple[str, bytes]]
    base_url: str = ""
    hits: Counter[str] = field(default_factory=Counter)


@contextmanager
def static_server(routes: dict[str, tuple[str, bytes]]) -> Iterator[StaticServer]:
    """Run a ``StaticServer`` on 127.0.0.1 and a free port for the duration of the block."""
    state = StaticServer(routes)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] += 1
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            content_type, body = route
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _serving(Handler) as state.base_url:
        yield state


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 and a free port, quietly, in threads; yield its URL."""
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class TricklingServer:
    """Answers every request one byte at a time, ``pause_s`` apart, for as long as the client
    stays: a server that never times a client out by a per-read deadline."""

    pause_s: float
    base_url: str = ""
    connections: int = 0


@contextmanager
def trickling_server(pause_s: float = 0.5) -> Iterator[TricklingServer]:
    """Run a ``TricklingServer`` on 127.0.0.1 and a free port for the duration of the block."""
    state = TricklingServer(pause_s)
    stop = threading.Event()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                state.connections += 1
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n" + b"\x89PNG" * 1000
            for byte in answer:
                if stop.wait(state.pause_s):
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client went away
                    return

    with _serving(Handler) as state.base_url:
        try:
            yield state
        finally:
            stop.set()
