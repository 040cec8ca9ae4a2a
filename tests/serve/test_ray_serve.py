"""`greenlm serve --ray`: the autoscaling policy and the metrics merge as pure functions, then a local Ray
instance started the way a user starts it, scaling 1 -> 2 replicas under load and back (every wait bounded;
tiny model, one thread per replica)."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from greenlm.serve.ray_deploy import CarbonQueuePolicy, merge_energy, merge_metrics
from tests.helpers import needs_llamacpp


def ctx(total, replicas=1, waiting=0.0, intensity=None, low=1, high=4):
    metrics = {"greenlm_waiting": {"r1": waiting}}
    if intensity is not None:
        metrics["greenlm_grid_intensity"] = {"r1": intensity}
    return SimpleNamespace(
        config=SimpleNamespace(get_target_ongoing_requests=lambda: 2.0),
        aggregated_metrics=metrics,
        total_num_requests=total,
        current_num_replicas=replicas,
        capacity_adjusted_min_replicas=low,
        capacity_adjusted_max_replicas=high,
        policy_state={},
    )


def test_policy_follows_ongoing_requests_queues_and_carbon():
    policy = CarbonQueuePolicy(high_g_per_kwh=400, carbon_factor=2.0)
    assert policy(ctx(0))[0] == 1  # the minimum
    assert policy(ctx(5))[0] == 3  # ceil(5 / 2)
    assert policy(ctx(20))[0] == 4  # the maximum
    assert policy(ctx(2, replicas=1, waiting=3))[0] == 2  # greenlm's queues hold requests: one more
    desired, state = policy(ctx(5, intensity=450))
    assert desired == 2 and "450 g/kWh" in state["greenlm_reason"]  # dirty grid: 4 requests per replica
    assert CarbonQueuePolicy()(ctx(5, intensity=450))[0] == 3  # no threshold: carbon does not count


def test_metrics_and_energy_merge_across_replicas():
    text = '# HELP greenlm:energy_joules E\n# TYPE greenlm:energy_joules counter\ngreenlm:energy_joules_total{phase="idle"} %s\n'
    merged = merge_metrics({"a": text % 1.5, "b": text % 2.5}).decode()
    samples = [s for f in text_string_to_metric_families(merged) for s in f.samples]
    assert {(s.labels["replica"], s.value) for s in samples} == {("a", 1.5), ("b", 2.5)}
    account = merge_energy(
        {
            "a": {
                "requests_j": 1.0,
                "idle_j": 2.0,
                "load_j": 0.0,
                "meter_total_j": 3.0,
                "meter": "cpu-model",
            },
            "b": {
                "requests_j": 4.0,
                "idle_j": 1.0,
                "load_j": 0.0,
                "meter_total_j": 5.0,
                "meter": "cpu-model",
            },
        }
    )
    assert account["meter_total_j"] == 8.0 and account["invariant_gap_rel"] == 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_llamacpp
def test_ray_serve_scales_out_under_load_and_back(start_server, chat_model_dir):
    port = free_port()
    server = start_server(
        "--ray", "--port", str(port), "--model", str(chat_model_dir), "--served-model-name", "tiny",
        "--threads", "1", "--max-batch", "4", "--meter", "cpu-model", "--min-replicas", "1", "--max-replicas", "2",
        "--target-ongoing-requests", "1", "--upscale-delay", "1", "--downscale-delay", "3", "--replica-cpus", "0.5",
        "--context", "512",
    )  # fmt: skip
    url = server.ready["url"]
    assert server.ready["replicas"] == 1

    def live() -> list[str]:
        return httpx.get(url + "/energy", timeout=30).json()["live_replicas"]

    def ask(i: int) -> dict:
        body = {"model": "tiny", "prompt": f"Lists are mutable {i}", "max_tokens": 300, "ignore_eos": True}
        response = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["usage"]

    deadline = time.monotonic() + 90
    replicas_seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        while time.monotonic() < deadline and len(live()) < 2:
            for usage in pool.map(ask, range(6)):
                assert usage["energy_j"] > 0 and usage["replica"]
                replicas_seen.add(usage["replica"])
    assert len(live()) == 2, "no second replica within 90 s of load"
    # the second replica serves too, metering its own energy; /metrics shows both
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for _ in range(5):
            replicas_seen |= {u["replica"] for u in pool.map(ask, range(6))}
            if len(replicas_seen) == 2:
                break
    assert len(replicas_seen) == 2
    text = httpx.get(url + "/metrics", timeout=30).text
    replicas_in_metrics = {
        s.labels["replica"]
        for f in text_string_to_metric_families(text)
        if f.name == "greenlm:energy_joules"
        for s in f.samples
    }
    assert replicas_in_metrics == replicas_seen
    account = httpx.get(url + "/energy", timeout=30).json()
    assert account["requests_j"] > 0 and set(account["replicas"]) >= replicas_seen
    # quiet: back to one replica
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(live()) > 1:
        time.sleep(1)
    assert len(live()) == 1, "still two replicas 60 s after the load stopped"
    code = server.stop(timeout_s=60)
    assert code == 0, server.log_path.read_text()[-3000:]
    assert server.stopped["event"] == "stopped" and server.stopped["requests_j"] > 0
