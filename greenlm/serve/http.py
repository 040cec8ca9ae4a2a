"""Running an app over HTTP with uvicorn, started the way `greenlm serve` starts it (the gateway starts the same
way: `serve_asgi` takes any ASGI app and what stops it accepting).

The socket is bound by the caller first (`bind_socket`), so a busy port fails in a moment, before a model
loads. The first SIGTERM or Ctrl-C stops new requests (503) and lets in-flight ones finish, up to the drain
timeout; a second Ctrl-C forces the exit. uvicorn itself would re-raise the signal after shutting down (exit
143 on SIGTERM); here the caller learns which signal stopped it and chooses the exit code.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from greenlm.errors import GreenlmError

if TYPE_CHECKING:
    from greenlm.serve.server import Server

HANDLED = (signal.SIGINT, signal.SIGTERM)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening), or a GreenlmError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise GreenlmError(
            f"--host {host}: cannot resolve it ({exc.strerror}): give an address such as 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = (
            "choose another --port or stop what uses it" if exc.errno == errno.EADDRINUSE else "check --host"
        )
        raise GreenlmError(f"cannot listen on {host}:{port}: {exc.strerror}: {hint}") from None
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HttpServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, stop_accepting: Callable[[], None], on_ready: Callable[[], None]
    ):
        super().__init__(config)
        self.stop_accepting = stop_accepting
        self.on_ready = on_ready
        self.signals: list[int] = []

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.on_ready()

    def capture_signals(self):
        return _Signals(self)

    def handle_exit(self, sig: int, frame) -> None:
        self.signals.append(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.stop_accepting()  # requests arriving on open connections get 503 while we drain
        self.should_exit = True


class _Signals:
    """Our handler while serving, the previous ones restored after; unlike uvicorn's, no signal re-raised."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.previous: dict = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self.previous[sig] = signal.signal(sig, self.server.handle_exit)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def serve_asgi(
    app,
    sock: socket.socket,
    *,
    stop_accepting: Callable[[], None],
    drain_timeout_s: float,
    on_ready: Callable[[], None] = lambda: None,
    log_level: str = "warning",
    access_log: bool = False,
) -> list[int]:
    """Serve the ASGI `app` on the bound `sock` until a signal; returns the signals received (empty: stopped
    otherwise). The first signal calls `stop_accepting`; in-flight requests get `drain_timeout_s` to finish."""
    sock.listen(2048)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=drain_timeout_s,
    )
    http = HttpServer(config, stop_accepting, on_ready)
    http.run(sockets=[sock])
    return http.signals


def serve_front_end(app, front_end, sock: socket.socket, **options) -> list[int]:
    """Serve the app of `front_end` (a Server or a Gateway: it has `stop_accepting()` and
    `config.drain_timeout_s`) on the bound `sock` until a signal (`options`: serve_asgi's on_ready, log_level,
    access_log); returns the signals received. In-flight requests get the drain time-out to finish."""
    return serve_asgi(
        app,
        sock,
        stop_accepting=front_end.stop_accepting,
        drain_timeout_s=front_end.config.drain_timeout_s,
        **options,
    )


def run_http(server: Server, sock: socket.socket, **options) -> list[int]:
    """Serve `server` on the bound `sock` until a signal, as `greenlm serve` does (`serve_front_end`)."""
    from greenlm.serve.app import create_app

    return serve_front_end(create_app(server), server, sock, **options)
