"""Servers started as a user starts them (`greenlm serve` in a subprocess on 127.0.0.1, a free port), each
bounded in time and stopped at the end; a tiny model with a chat template so chat requests work."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # a cold start exports the tiny model to GGUF and imports torch; a busy machine is slow
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    # a long context, so a request can hold its slot for seconds even on a fast machine (overload tests)
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-chat"), context=4096)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


class ServerProcess:
    """`greenlm serve --json --port 0 ...` in a subprocess; `url` once its ready record is printed."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "greenlm", "serve", "--port", "0", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.returncode: int | None = None
        self.stopped: dict | None = None
        self.ready: dict | None = None
        self.url = ""

    def wait_ready(self) -> ServerProcess:
        self.ready = self.next_record(START_TIMEOUT_S)
        assert self.ready is not None and self.ready["event"] == "ready", self.stderr()
        self.url = self.ready["url"]
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next_record(self, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return None
            if line.strip():
                return json.loads(line)
        return None

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait(10)
        self.stopped = self.next_record(5)
        self._log.close()
        return self.returncode


@pytest.fixture(scope="module")
def start_server(tmp_path_factory, shared_cache_dir):
    """start_server(*args) -> a running ServerProcess; every one is stopped when the module ends."""
    started: list[ServerProcess] = []
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        GREENLM_CACHE_DIR=str(shared_cache_dir),
        GREENLM_DB=str(tmp_path_factory.mktemp("serve-db") / "greenlm.db"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )

    def start(*args: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("serve-log") / "stderr.txt"
        server = ServerProcess(list(args), env, log)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
