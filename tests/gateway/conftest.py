"""Upstreams started as their users start them (llama-cpp-python's own server on a tiny GGUF built here,
`greenlm serve` on the same tiny model), and the gateway in front of them in this process (its app under
uvicorn on 127.0.0.1, a free port), each stopped at the end and bounded in time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.helpers import export_gguf
from tests.serve.conftest import ROOT, ServerProcess, chat_model_dir  # noqa: F401 (a fixture used here)

UPSTREAM_START_S = 120


@pytest.fixture(scope="session")
def tiny_chat_dir(chat_model_dir):  # noqa: F811 (the fixture imported above)
    """serve's tiny chat model (a template, a long context): the upstreams' model."""
    return chat_model_dir


@pytest.fixture(scope="session")
def tiny_gguf(tiny_chat_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gw-gguf") / "tiny.gguf"
    export_gguf(tiny_chat_dir, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """`python -m llama_cpp.server` (llama-cpp-python's OpenAI server) on a free port."""

    def __init__(self, gguf: Path, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_threads", "1", "--n_ctx", "4096", "--verbose", "False"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + UPSTREAM_START_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"llama_cpp.server did not start: {log_path.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def start_llama(tiny_gguf, tmp_path_factory):
    started: list[LlamaCppServer] = []

    def start(port: int | None = None) -> LlamaCppServer:
        server = LlamaCppServer(tiny_gguf, tmp_path_factory.mktemp("llama-log") / "log.txt", port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def greenlm_serve(tiny_chat_dir, tmp_path_factory, shared_cache_dir):
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        GREENLM_CACHE_DIR=str(shared_cache_dir),
        GREENLM_DB=str(tmp_path_factory.mktemp("serve-db") / "greenlm.db"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    args = ["--model", str(tiny_chat_dir), "--served-model-name", "tiny", "--max-batch", "8", "--meter", "cpu-model",
            "--threads", "1"]  # fmt: skip
    server = ServerProcess(args, env, tmp_path_factory.mktemp("serve-log") / "stderr.txt").wait_ready()
    yield server
    server.stop()


class RunningGateway:
    """A Gateway and its app under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, config):
        from greenlm.gateway.app import create_gateway_app
        from greenlm.gateway.gateway import Gateway

        self.notes: list[str] = []
        self.gateway = Gateway(config, announce=self.notes.append)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_gateway_app(self.gateway),
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=10,
            )
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the gateway did not start"
            time.sleep(0.02)

    def settled_energy(self, timeout_s: float = 20.0) -> dict:
        """/energy once nothing is in flight or pending (every request booked)."""
        deadline = time.monotonic() + timeout_s
        while True:
            energy = self.gateway.energy()
            if (energy["in_flight"] == 0 and energy["pending_j"] == 0) or time.monotonic() > deadline:
                return energy
            for group in self.gateway.groups:
                group.close_now()
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.gateway.close()
        self.sock.close()


@pytest.fixture
def start_gateway():
    started: list[RunningGateway] = []

    def start(**fields) -> RunningGateway:
        from greenlm.energy.settings import EnergySettings
        from greenlm.gateway.config import GatewayConfig

        fields.setdefault("scrape_interval_s", 0.2)
        fields.setdefault("health_interval_s", 0.3)
        fields.setdefault("energy", EnergySettings(meter="cpu-model"))
        running = RunningGateway(GatewayConfig(port=0, **fields))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
