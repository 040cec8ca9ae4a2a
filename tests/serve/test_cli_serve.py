"""`greenlm serve` refuses bad flags and models with one line and exit 2, before binding or loading."""

import socket

import pytest

from tests.helpers import run_cli


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--port", "70000"], "--port"),
        (["--engine", "vllm"], "unknown engine"),
        (["--model", "/no/such/model"], "not found"),
        (["--country", "XX"], "country"),
        (["--step-tokens", "4", "--max-batch", "8"], "--step-tokens"),
        (["--pue", "0.5"], "PUE"),
        (["--meter", "joules"], "unknown meter"),
        (["--log-level", "loud"], "--log-level"),
        (["--api-key", " "], "--api-key"),
        (["--drain-timeout", "-1"], "--drain-timeout"),
        (["--host", "999.1.1.1", "--engine", "transformers"], "--host"),  # skip the GGUF check
        (["--temperature", "0"], "No such option"),
    ],
)
def test_bad_flags(monkeypatch, capsys, args, expected):
    code, out, err = run_cli(monkeypatch, capsys, "serve", *args)
    assert code == 2 and out == ""
    assert err.startswith("error:") and expected in err and err.count("\n") == 1, err


def test_corrupt_model_file(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    code, out, err = run_cli(monkeypatch, capsys, "serve", "--model", str(bad))
    assert code == 2 and err.startswith("error:") and "broken.gguf" in err and err.count("\n") == 1


def test_busy_port(monkeypatch, capsys, busy_port):
    code, out, err = run_cli(
        monkeypatch, capsys, "serve", "--port", str(busy_port), "--engine", "transformers"
    )
    assert code == 2 and "already in use" in err and "--port" in err and err.count("\n") == 1
