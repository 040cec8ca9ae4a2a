"""Several upstreams as a ladder: serve's policies choose the upstream of each new request (the policy file's
start, then the carbon policy on a replayed grid), a down upstream is skipped, and the policy file's mistakes
are one line each."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from greenlm.errors import GreenlmError
from greenlm.gateway.policy import load_gateway_policy
from tests.helpers import needs_llamacpp


def write_policy(tmp_path, small: str, big: str, extra: str = "") -> str:
    (tmp_path / "grid.csv").write_text(
        "timestamp,g_per_kwh\n2024-01-01T00:00:00Z,520\n2024-01-01T01:00:00Z,530\n"
    )
    path = tmp_path / "ladder.yaml"
    path.write_text(
        f"""ladder:
  - {{name: small, url: {small}, kld: 0.02, decode_j_per_token: 0.05}}
  - {{name: big, url: {big}/v1, kld: 0.001, decode_j_per_token: 0.2}}
start: big
interval_s: 0.2
quality: {{max_kld: 0.05}}
{extra}"""
    )
    return str(path)


def upstream_of(gw, prompt: str = "Hello") -> str:
    r = httpx.post(
        gw.url + "/v1/completions",
        json={"model": gw.gateway.model_id, "prompt": prompt, "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["usage"]["upstream"]


@needs_llamacpp
def test_policy_start_then_failover_to_the_other_upstream(start_llama, start_gateway, tmp_path):
    small, big = start_llama(), start_llama()
    gw = start_gateway(
        policy=write_policy(tmp_path, small.url, big.url, "load: false\n"), health_interval_s=0.2
    )
    assert gw.gateway.active == "big" and [u.name for u in gw.gateway.upstreams] == ["small", "big"]
    assert upstream_of(gw) == "big"
    variants = httpx.get(gw.url + "/v1/models").json()["data"][0]["variants"]
    assert {v["name"]: v["active"] for v in variants} == {"small": False, "big": True}
    big.kill()
    deadline = time.monotonic() + 20
    while gw.gateway.upstreams[1].up and time.monotonic() < deadline:
        time.sleep(0.1)
    assert upstream_of(gw) == "small"  # the active one is down: the next up upstream takes new requests


@needs_llamacpp
def test_carbon_policy_moves_new_requests_to_the_cheapest_upstream(start_llama, start_gateway, tmp_path):
    small, big = start_llama(), start_llama()
    extra = (
        "grid: {csv: grid.csv, speed: 1}\ncarbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}\nload: false\n"
    )
    gw = start_gateway(policy=write_policy(tmp_path, small.url, big.url, extra))
    deadline = time.monotonic() + 20
    while gw.gateway.active != "small" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.gateway.active == "small"
    assert upstream_of(gw) == "small"
    data = httpx.get(gw.url + "/dashboard/data").json()
    decision = data["decisions"][0]
    assert (decision["from"], decision["to"], decision["reason"]) == ("big", "small", "carbon-high")
    assert data["energy"]["intensity_g_per_kwh"] >= 520
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'greenlm:policy_decisions_total{from="big"' in metrics


@pytest.mark.parametrize(
    "body, says",
    [
        ("ladder: []", "ladder must list the upstreams"),
        ("ladder: [{name: a}]", "(a) has no url"),
        ("ladder: [{name: a, url: 'ftp://x'}]", "is not an http(s) URL"),
        ("ladder: [{name: a, url: 'http://x', kld: -1}]", "ladder[0].kld must be a number"),
        ("ladder: [{name: a, url: 'http://x', modle: m}]", "ladder[0].modle is not a setting here"),
        ("ladder: [{name: a, url: 'http://x'}]\nidle: {unload_after_s: 60}", "which a gateway does not own"),
        ("ladder: [{name: a, url: 'http://x'}]\nstart: b", "start names 'b', which is not in the ladder"),
        ("ladder: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]", "names 'a' twice"),
        ("ladder: [{name: a, url: 'http://x'}]\ncarbon: {high_g_per_kwh: 400}", "needs a grid intensity"),
    ],
)
def test_policy_file_mistakes_are_one_line(tmp_path, body, says):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(GreenlmError, match=re.escape(says)):
        load_gateway_policy(str(path))
