"""`greenlm gateway` and `greenlm meter-agent` as a user starts them: subprocesses with --json, a request
through, SIGTERM; a meter agent's counter as the gateway's meter; bad input as one line and exit code 2."""

from __future__ import annotations

import os
import signal
import socket
import sys

import httpx
import pytest

from greenlm.cli import main
from tests.gateway.conftest import free_port
from tests.helpers import needs_llamacpp
from tests.serve.conftest import ROOT, ServerProcess


@pytest.fixture
def env(tmp_path, shared_cache_dir):
    e = dict(os.environ)
    e.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")])),
        GREENLM_CACHE_DIR=str(shared_cache_dir),
        GREENLM_DB=str(tmp_path / "greenlm.db"),
    )
    return e


@needs_llamacpp
def test_gateway_cli_ready_request_and_sigterm(start_llama, env, tmp_path):
    llama = start_llama()
    gw = ServerProcess(
        ["--upstream", llama.url, "--meter", "cpu-model", "--scrape-interval-s", "0.2"],
        env, tmp_path / "gw.txt", verb="gateway",
    ).wait_ready()  # fmt: skip
    try:
        ready = gw.ready
        assert ready["upstreams"][0]["up"] and ready["meters"][0]["meter"] == "cpu-model"
        assert f"pid {llama.proc.pid}" in ready["meters"][0]["note"]
        r = httpx.post(
            gw.url + "/v1/completions", json={"model": ready["model"], "prompt": "Hi", "max_tokens": 5}
        )
        assert r.status_code == 200 and r.json()["usage"]["energy_j"] > 0
    finally:
        code = gw.stop(signal.SIGTERM)
    assert code == 0, gw.stderr()
    stopped = gw.stopped
    assert stopped["event"] == "stopped" and stopped["requests"] == 1
    total = stopped["requests_j"] + stopped["idle_j"] + stopped["pending_j"]
    assert total == pytest.approx(stopped["meter_total_j"], rel=1e-9)


@needs_llamacpp
def test_meter_agent_counter_meters_an_upstream_through_the_gateway(start_llama, env, tmp_path):
    llama = start_llama()
    agent = ServerProcess(
        ["--pid", str(llama.proc.pid)], env, tmp_path / "agent.txt", verb="meter-agent"
    ).wait_ready()
    try:
        assert agent.ready["scope"] == f"pid:{llama.proc.pid}" and agent.ready["meter"] == "cpu-model"
        metric = f"{agent.url}/metrics#greenlm:energy_joules_total"
        gw = ServerProcess(
            ["--upstream", llama.url, "--energy-metric", metric, "--scrape-interval-s", "0.2"],
            env, tmp_path / "gw.txt", verb="gateway",
        ).wait_ready()  # fmt: skip
        try:
            meter = gw.ready["meters"][0]
            assert meter["meter"] == "cpu-model" and not meter["read_at_request_end"]
            body = {"model": gw.ready["model"], "prompt": "The import system", "max_tokens": 20}
            usage = httpx.post(gw.url + "/v1/completions", json=body, timeout=60).json()["usage"]
            assert (
                usage["energy_j"] > 0
                and usage["meter"] == "cpu-model"
                and usage["energy_source"] == "estimated"
            )
        finally:
            assert gw.stop() == 0, gw.stderr()
    finally:
        agent.stop()


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no upstream: give --upstream URL"),
        (["--upstream", "localhost:8080"], "is not an http(s) URL: write e.g. http://127.0.0.1:8080"),
        (["--upstream", "http://127.0.0.1:{dead}"], "no upstream answers: 127.0.0.1:{dead}"),
        (
            ["--upstream", "http://127.0.0.1:{dead}", "--energy-metric", "http://h:9400/metrics"],
            "names no metric",
        ),
        (
            ["--upstream", "http://a:1", "--upstream", "http://b:1", "--upstream-pid", "7"],
            "is given 1 times for 2",
        ),
        (
            ["--upstream", "http://127.0.0.1:{dead}", "--upstream-key-env", "GREENLM_NO_SUCH_KEY"],
            "GREENLM_NO_SUCH_KEY",
        ),
        (
            ["--upstream", "http://127.0.0.1:{dead}", "--tokenizer", "/no/such/tokenizer"],
            "--tokenizer /no/such",
        ),
        (
            ["--upstream", "http://127.0.0.1:{dead}", "--scrape-interval-s", "0"],
            "--scrape-interval-s must be",
        ),
        (["--upstream", "http://127.0.0.1:{dead}", "--port", "{busy}"], "cannot listen on 127.0.0.1:{busy}"),
        (["--upstream", "http://127.0.0.1:{dead}", "--meter", "watts"], "unknown meter 'watts'"),
        (["--policy", "/no/such/ladder.yaml"], "/no/such/ladder.yaml"),
    ],
)
def test_gateway_bad_input_one_line_exit_2(monkeypatch, capsys, busy_port, args, message):
    dead = free_port()
    fill = {"dead": dead, "busy": busy_port}
    code, out, err = run_cli(monkeypatch, capsys, "gateway", *[a.format(**fill) for a in args])
    assert code == 2, err
    assert message.format(**fill) in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pid", "4194000"], "--pid 4194000: no such process"),
        (["--pid", "1", "--meter", "rapl"], "only the cpu-model estimate can"),
        (["--port", "70000"], "--port must be"),
    ],
)
def test_meter_agent_bad_input_one_line_exit_2(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, "meter-agent", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
