"""Grid signals: a replayed CSV on a test clock; Electricity Maps against a local fake server, never the
network."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError
from greenlm.grid import CsvIntensity, ElectricityMaps

FALLBACK = GridIntensity(475.0, "world", "codecarbon world_average")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_csv_replays_at_any_speed_and_loops(tmp_path):
    path = tmp_path / "day.csv"
    path.write_text(
        "timestamp,g_per_kwh\n2025-06-01T00:00:00Z,500\n2025-06-01T12:00:00Z,100\n2025-06-01T18:00:00Z,300\n"
    )
    clock = Clock()
    grid = CsvIntensity(path, speed=3600, clock=clock)  # an hour of the series per second
    grid.start()
    assert grid.now().intensity_g_per_kwh == 500 and grid.now().trace_time.startswith("2025-06-01T00:00")
    clock.t += 11.9
    assert grid.now().intensity_g_per_kwh == 500  # each row holds until the next
    clock.t += 0.2
    assert grid.now().intensity_g_per_kwh == 100
    clock.t += 6
    assert grid.now().intensity_g_per_kwh == 300
    clock.t += 6.1  # a period is the span plus one step (18 h + 6 h): the series starts over
    assert grid.now().intensity_g_per_kwh == 500
    held = CsvIntensity(path, speed=3600, loop=False, clock=clock)
    held.start()
    clock.t += 1e6
    assert held.now().intensity_g_per_kwh == 300


class _FakeMaps(BaseHTTPRequestHandler):
    answers: list = []
    seen: list = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("auth-token")))
        status, body = type(self).answers.pop(0) if type(self).answers else (500, {"error": "down"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_maps():
    server = HTTPServer(("127.0.0.1", 0), _FakeMaps)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeMaps.answers, _FakeMaps.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v3/carbon-intensity/latest"
    server.shutdown()
    server.server_close()


def test_electricity_maps_live_then_failing_then_back(fake_maps, monkeypatch):
    monkeypatch.setenv("EM_TEST_TOKEN", "secret")
    grid = ElectricityMaps("FR", fallback=FALLBACK, url=fake_maps, token_env="EM_TEST_TOKEN", timeout_s=5)
    assert grid.now().stale and grid.now().intensity_g_per_kwh == 475.0  # before the first answer
    _FakeMaps.answers = [
        (200, {"zone": "FR", "carbonIntensity": 52, "datetime": "2025-06-01T12:00:00.000Z"}),
        (503, {"error": "busy"}),
        (200, {"zone": "FR", "carbonIntensity": 61}),
    ]
    grid.poll_once()
    reading = grid.now()
    assert (reading.intensity_g_per_kwh, reading.stale) == (
        52.0,
        False,
    ) and "Electricity Maps FR" in reading.source
    assert _FakeMaps.seen[0] == ("/v3/carbon-intensity/latest?zone=FR", "secret")
    grid.poll_once()  # a failure keeps the last good figure, marked stale
    assert (grid.now().intensity_g_per_kwh, grid.now().stale) == (52.0, True) and grid.failures == 1
    grid.poll_once()
    assert (grid.now().intensity_g_per_kwh, grid.now().stale) == (61.0, False)


def test_electricity_maps_needs_its_token(monkeypatch):
    monkeypatch.delenv("EM_TEST_TOKEN", raising=False)
    with pytest.raises(GreenlmError, match=r"\$EM_TEST_TOKEN"):
        ElectricityMaps("FR", fallback=FALLBACK, token_env="EM_TEST_TOKEN")
