"""The shell of the verbs that listen until stopped (serve, gateway, meter-agent): the log level, the port bound
before anything slow starts, the ready record, and what is said when a signal stops it."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from greenlm.cli.common import out
from greenlm.errors import GreenlmError
from greenlm.serve.config import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, DRAIN_TIMEOUT_S, MAX_BODY_BYTES

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
T = TypeVar("T")

# the flags of serve and gateway alike (defaults: serve.config's, which GatewayConfig shares)
HostOpt = typer.Option(DEFAULT_HOST, "--host", help="Address to bind (0.0.0.0: every interface).")
PortOpt = typer.Option(DEFAULT_PORT, "--port", help="Port (0: any free one, printed at start).")
ApiKeyOpt = typer.Option(
    None,
    "--api-key",
    help=f"Require 'Authorization: Bearer KEY' on /v1, /energy and /dashboard (or set ${API_KEY_ENV}).",
)
MaxBodyOpt = typer.Option(MAX_BODY_BYTES, "--max-body-bytes", help="Larger request bodies get 413.")
DrainOpt = typer.Option(
    DRAIN_TIMEOUT_S, "--drain-timeout", help="Seconds in-flight requests get to finish on SIGTERM."
)
LogLevelOpt = typer.Option("warning", "--log-level", help="uvicorn's log level.")
AccessLogOpt = typer.Option(False, "--access-log", help="Log every request (uvicorn's access log).")
JsonLinesOpt = typer.Option(
    False, "--json", help="JSON lines on stdout: the startup record when ready, a summary when stopped."
)


def api_key_or_env(api_key: str | None) -> str | None:
    """--api-key, else $GREENLM_API_KEY."""
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV)


def check_log_level(log_level: str) -> None:
    if log_level not in LOG_LEVELS:
        raise GreenlmError(f"unknown --log-level '{log_level}': choose one of {', '.join(LOG_LEVELS)}")


def emit(record: dict) -> None:
    """One JSON line on stdout, at once (a parent process waits for it)."""
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def address(sock) -> dict:
    from greenlm.serve.http import socket_url

    host, port = sock.getsockname()[:2]
    return {"url": socket_url(sock), "host": host, "port": port}


def ready(record: dict, as_json: bool, lines: Callable[[dict], list[str]]) -> None:
    """The startup record: one JSON line with the pid, or the `lines` a person reads."""
    if as_json:
        emit({"event": "ready", "pid": os.getpid(), **record})
        return
    for line in lines(record):
        out.print(line, markup=False, soft_wrap=True)
    sys.stdout.flush()


def listen_until_stopped(
    host: str,
    port: int,
    start: Callable[[], T],
    run: Callable[[T, object], list[int]],
    close: Callable[[T], None],
    summary: Callable[[T], dict],
    *,
    as_json: bool,
    stopped_line: Callable[[dict], str | None],
) -> None:
    """Bind host:port (a busy port fails before anything starts), `start` the service, `run` it on the socket
    until a signal, `close` it, then print its `summary` (a JSON line, or `stopped_line`). Ctrl-C exits 130."""
    from greenlm.serve.http import bind_socket

    sock = bind_socket(host, port)
    try:
        service = start()
        try:
            signals = run(service, sock)
        finally:
            close(service)
        record = summary(service)
    finally:
        sock.close()
    if as_json:
        emit({"event": "stopped", **record})
    else:
        line = stopped_line(record)
        if line:
            out.print(line, markup=False, soft_wrap=True)
    if signal.SIGINT in signals:
        raise typer.Exit(130)
