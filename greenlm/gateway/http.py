"""Serving the gateway over HTTP the way `greenlm serve` starts (`greenlm.serve.http`): the port bound first,
a ready callback once listening, the first SIGTERM or Ctrl-C stops new requests (503) while in-flight ones
finish, up to the drain time-out."""

from __future__ import annotations

import socket

from greenlm.gateway.app import create_gateway_app
from greenlm.gateway.gateway import Gateway
from greenlm.serve.http import serve_front_end


def run_gateway(gateway: Gateway, sock: socket.socket, **options) -> list[int]:
    """Serve `gateway` on the bound `sock` until a signal (`options`: on_ready, log_level, access_log); the
    signals received."""
    return serve_front_end(create_gateway_app(gateway), gateway, sock, **options)
