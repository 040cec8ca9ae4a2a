"""An adaptive server over real HTTP on the tiny model: a two-variant ladder, a replayed grid that flips
every second, idle unload and reload, concurrent requests through every switch (none may fail), the
decisions in /metrics, the store and the stop summary, and the dashboard drawn by headless Chromium."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import subprocess
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import headless_browser, needs_llamacpp

pytestmark = needs_llamacpp

MODEL = "tiny"
BOUND_S = 60  # every wait in this module is bounded


@pytest.fixture(scope="module")
def adaptive(start_server, chat_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    # an hour per row, replayed at 3600x: the grid flips between dirty and clean every second
    rows = "\n".join(f"2025-06-01T{h:02d}:00:00Z,{500 if h % 2 == 0 else 80}" for h in range(24))
    (folder / "grid.csv").write_text("timestamp,g_per_kwh\n" + rows + "\n")
    (folder / "policy.yaml").write_text(
        f"""
interval_s: 0.2
ladder:
  - {{name: good, model: {chat_model_dir}, kld: 0.0, decode_j_per_token: 0.2, decode_tokens_per_s: 50}}
  - {{name: cheap, model: {chat_model_dir}, kld: 0.3, decode_j_per_token: 0.1, decode_tokens_per_s: 80}}
quality: {{max_kld: 0.1, window_tokens: 100000, min_credit_tokens: 0}}
grid: {{csv: grid.csv, speed: 3600}}
carbon: {{high_g_per_kwh: 400, low_g_per_kwh: 100}}
idle: {{unload_after_s: 2, low_load_after_s: 0.6}}
"""
    )
    db = folder / "store.db"
    server = start_server(
        "--policy", str(folder / "policy.yaml"), "--served-model-name", MODEL, "--max-batch", "4",
        "--meter", "cpu-model", "--db", str(db),
    )  # fmt: skip
    server.db = db
    return server


@pytest.fixture(scope="module")
def client(adaptive):
    with openai.OpenAI(base_url=adaptive.url + "/v1", api_key="unused", timeout=BOUND_S, max_retries=0) as c:
        yield c


def data(server, since=0) -> dict:
    return httpx.get(server.url + "/dashboard/data", params={"since": since}, timeout=BOUND_S).json()


def wait_for(predicate, what: str):
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ladder_in_the_ready_record_and_models(adaptive, client):
    ready = adaptive.ready
    assert [v["name"] for v in ready["ladder"]] == ["cheap", "good"]  # cheapest first
    assert ready["ladder"][0]["inside_budget"] is False and "given in policy" in ready["ladder"][0]["source"]
    card = client.models.list().data[0]
    assert card.id == MODEL and card.variant in ("good", "cheap") and len(card.variants) == 2


def test_requests_through_switches_unloads_and_reloads_never_fail(adaptive, client):
    def ask(i: int):
        return client.completions.create(
            model=MODEL,
            prompt=f"Lists are mutable {i}",
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True},
        )

    variants_seen = set()
    deadline = time.monotonic() + 8  # ~8 grid flips
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        while time.monotonic() < deadline:
            for r in pool.map(ask, range(6)):
                assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24
                variants_seen.add(r.usage.variant)
    assert variants_seen == {"good", "cheap"}
    view = data(adaptive)
    switches = [d for d in view["decisions"] if d["kind"] == "variant"]
    # both ways, each for a policy's reason (which policy moves first depends on timing: the policies'
    # own unit tests pin the rules)
    assert {d["to"] for d in switches} >= {"good", "cheap"}
    assert "carbon-high" in {d["reason"] for d in switches}
    assert {d["reason"] for d in switches} <= {
        "carbon-high",
        "carbon-low",
        "quality-budget",
        "load-slo",
        "load-calm",
    }
    assert view["quality"]["mean_kld_served"] <= 0.1  # the token-weighted budget held
    # quiet: one core, then unloaded; the next request reloads it and succeeds
    wait_for(lambda: not data(adaptive)["state"]["loaded"], "the idle unload")
    assert data(adaptive)["state"]["cores"] == 1
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert chat.usage.variant in ("good", "cheap") and chat.usage.energy_j > 0
    reload = [d for d in data(adaptive)["decisions"] if d["kind"] == "reload"]
    assert reload and reload[-1]["load_s"] > 0 and reload[-1]["energy_j"] > 0
    energy = httpx.get(adaptive.url + "/energy").json()
    assert energy["load_j"] > 0 and energy["invariant_gap_rel"] < 1e-9
    assert energy["meter_total_basis"].startswith("sum of windows")


def test_decisions_counted_in_metrics(adaptive):
    text = httpx.get(adaptive.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    decisions = families["greenlm:policy_decisions"].samples
    labels = {
        (s.labels["from"], s.labels["to"], s.labels["reason"]) for s in decisions if s.name.endswith("_total")
    }
    assert ("good", "unloaded", "idle-unload") in labels or ("cheap", "unloaded", "idle-unload") in labels
    assert any(reason == "carbon-high" for _, _, reason in labels)
    phases = {s.labels["phase"] for s in families["greenlm:energy_joules"].samples}
    assert phases == {"prefill", "decode", "idle", "load"}
    assert "greenlm:grid_intensity_grams_per_kwh" in families and "greenlm:variant_active" in families


def test_dashboard_draws_in_headless_chromium(adaptive, tmp_path):
    browser = headless_browser()
    page = httpx.get(adaptive.url + "/dashboard").text
    assert "<script" in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing external
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000", "--window-size=1300,1400",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", adaptive.url + "/dashboard"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for chart in ("chart-power", "chart-efficiency", "chart-queue", "chart-grid", "chart-variant"):
        tag = dom[dom.index(f'id="{chart}"') - 200 : dom.index(f'id="{chart}"') + 200]
        points = int(tag.split('data-points="')[1].split('"')[0])
        assert points > 2, (chart, tag)
    assert dom.count("<polyline") >= 6 and 'class="decision"' in dom
    assert "idle-unload" in dom and '<span class="stat" id="status">updated' in dom


def test_stop_summary_and_stored_decisions(adaptive):
    assert adaptive.stop(timeout_s=60) == 0, adaptive.stderr()
    stopped = adaptive.stopped
    assert stopped["decisions"] >= 3 and stopped["mean_kld_served"] <= 0.1
    assert set(stopped["tokens_by_variant"]) == {"good", "cheap"} and stopped["reloads"]
    with sqlite3.connect(adaptive.db) as db:
        kinds = [r[0] for r in db.execute("SELECT record_json FROM runs WHERE kind = 'policy_decision'")]
    assert len(kinds) == stopped["decisions"]
