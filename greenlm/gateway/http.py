"""Serving the gateway over HTTP the way `greenlm serve` starts (`greenlm.serve.http`): the port bound first,
a ready callback once listening, the first SIGTERM or Ctrl-C stops new requests (503) while in-flight ones
finish, up to the drain time-out."""

from __future__ import annotations

import socket
from collections.abc import Callable

from greenlm.gateway.app import create_gateway_app
from greenlm.gateway.gateway import Gateway
from greenlm.serve.http import serve_asgi


def run_gateway(
    gateway: Gateway,
    sock: socket.socket,
    *,
    on_ready: Callable[[], None] = lambda: None,
    log_level: str = "warning",
    access_log: bool = False,
) -> list[int]:
    """Serve `gateway` on the bound `sock` until a signal; the signals received."""
    return serve_asgi(
        create_gateway_app(gateway),
        sock,
        stop_accepting=gateway.stop_accepting,
        drain_timeout_s=gateway.config.drain_timeout_s,
        on_ready=on_ready,
        log_level=log_level,
        access_log=access_log,
    )
