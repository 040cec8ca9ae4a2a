"""Forecasts: a replayed trace forecast by each stated model (pure, on a small trace); Electricity Maps'
forecast endpoint and WattTime's forecast through its official client, each against a local fake server
(never the network); the grid flags checked with one clear line each."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from greenlm.defer.clock import ReplayClock
from greenlm.defer.forecast import (
    G_PER_KWH_PER_LB_PER_MWH,
    ElectricityMapsForecaster,
    Forecast,
    TraceForecaster,
    WattTimeForecaster,
)
from greenlm.defer.grid import open_grid
from greenlm.defer.settings import GridSettings, parse_duration_s
from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError

HOUR = 3600.0
DAY = 24 * HOUR
FALLBACK = GridIntensity(300.0, "override", "test fallback")


def two_days() -> tuple[list[float], list[float]]:
    """Hourly rows over two days: day one 100 + hour, day two 500 + hour."""
    times = [i * HOUR for i in range(48)]
    values = [100.0 + i if i < 24 else 500.0 + (i - 24) for i in range(48)]
    return times, values


def test_perfect_foresight_is_the_trace_itself():
    times, values = two_days()
    f = TraceForecaster(times, values, "perfect", name="t").forecast(now_s=2.5 * HOUR, horizon_s=3 * HOUR)
    assert f.starts_s[:4] == (2 * HOUR, 3 * HOUR, 4 * HOUR, 5 * HOUR) and f.values_g_per_kwh[:4] == (
        102,
        103,
        104,
        105,
    )
    assert "perfect foresight" in f.source and f.model == "perfect"


def test_yesterday_forecasts_the_same_hour_a_day_earlier_and_observes_now():
    times, values = two_days()
    f = TraceForecaster(times, values, "yesterday", name="t").forecast(now_s=26.5 * HOUR, horizon_s=3 * HOUR)
    # now (hour 26) is observed: 502; the hours after are yesterday's 27, 28, 29 -> 103, 104, 105
    assert f.values_g_per_kwh[:4] == (502, 103, 104, 105)
    first_day = TraceForecaster(times, values, "yesterday", name="t").forecast(
        now_s=1.5 * HOUR, horizon_s=2 * HOUR
    )
    assert set(first_day.values_g_per_kwh) == {101}  # no yesterday yet: the present held


def test_persistence_holds_the_present_and_a_looping_trace_wraps():
    times, values = two_days()
    f = TraceForecaster(times, values, "persistence", name="t").forecast(now_s=5.2 * HOUR, horizon_s=4 * HOUR)
    assert set(f.values_g_per_kwh) == {105}
    wrapped = TraceForecaster(times, values, "perfect", name="t").forecast(
        now_s=2 * DAY + 3 * HOUR, horizon_s=HOUR
    )
    assert (
        wrapped.starts_s[0] == 2 * DAY + 3 * HOUR and wrapped.values_g_per_kwh[0] == 103
    )  # the loop's day one


def test_slots_are_cut_at_the_forecast_points_and_hold_beyond_it():
    f = Forecast((0.0, 10.0, 20.0), (300.0, 100.0, 200.0), 10.0, "s", "perfect")
    slots = f.slots(now_s=5.0, until_s=45.0)
    assert [(s.start_s, s.end_s, s.intensity_g_per_kwh) for s in slots] == [
        (5, 10, 300),
        (10, 20, 100),
        (20, 45, 200),
    ]
    assert f.beyond_horizon(45.0) and not f.beyond_horizon(25.0)


def test_a_replay_clock_runs_at_its_speed_and_maps_back_to_wall_time():
    wall = [1000.0]
    clock = ReplayClock(origin_unix=1000.0, trace_start_s=5 * HOUR, speed=720, wall=lambda: wall[0])
    wall[0] += 10.0
    assert clock.now_s() == 5 * HOUR + 7200 and clock.unix_at(5 * HOUR + 3600) == 1005.0
    assert clock.wall_seconds(DAY) == 120.0


# ---- providers against local fake servers --------------------------------------------------------------
class _Fake(BaseHTTPRequestHandler):
    routes: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        type(self).seen.append((path, dict(self.headers)))
        status, body = type(self).routes.get(path, (404, {"error": "no such route"}))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    _Fake.routes, _Fake.seen = {}, []
    server = HTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Fake
    server.shutdown()


def test_electricity_maps_forecast(fake, monkeypatch):
    url, handler = fake
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", "secret")
    handler.routes["/v3/carbon-intensity/forecast"] = (200, {
        "zone": "GB",
        "forecast": [{"carbonIntensity": 210, "datetime": "2025-06-01T12:00:00.000Z"}, {"carbonIntensity": 90, "datetime": "2025-06-01T13:00:00.000Z"}],
    })  # fmt: skip
    forecaster = ElectricityMapsForecaster("GB", fallback_g_per_kwh=300, url=url + "/v3")
    before = forecaster.forecast(0.0, HOUR)
    assert before.values_g_per_kwh == (300,) and "no forecast yet" in before.source
    forecaster.poll_once()
    f = forecaster.forecast(0.0, HOUR)
    assert (
        f.values_g_per_kwh == (210, 90)
        and f.step_s == HOUR
        and f.source == "Electricity Maps forecast for GB"
    )
    assert handler.seen[-1][1]["auth-token"] == "secret" and forecaster.version == 1
    handler.routes["/v3/carbon-intensity/forecast"] = (500, {"error": "down"})
    forecaster.poll_once()
    assert forecaster.forecast(0.0, HOUR) == f and forecaster.failures == 1  # the last good forecast stands


def test_watttime_forecast_through_its_official_client(fake, monkeypatch):
    pytest.importorskip("watttime")
    url, handler = fake
    monkeypatch.setenv("WATTTIME_USER", "user")
    monkeypatch.setenv("WATTTIME_PASSWORD", "pass")
    handler.routes["/login"] = (200, {"token": "jwt"})
    handler.routes["/v3/forecast"] = (200, {
        "data": [{"point_time": "2025-06-01T12:00:00+00:00", "value": 1000.0}, {"point_time": "2025-06-01T12:05:00+00:00", "value": 500.0}],
        "meta": {"units": "lbs_co2_per_mwh", "region": "CAISO_NORTH", "signal_type": "co2_moer", "data_point_period_seconds": 300},
    })  # fmt: skip
    forecaster = WattTimeForecaster("CAISO_NORTH", fallback_g_per_kwh=300, url=url)
    forecaster.poll_once()
    f = forecaster.forecast(0.0, HOUR)
    assert f.values_g_per_kwh == pytest.approx(
        (1000 * G_PER_KWH_PER_LB_PER_MWH, 500 * G_PER_KWH_PER_LB_PER_MWH)
    )
    assert f.step_s == 300 and "marginal" in f.source
    login = next(h for p, h in handler.seen if p == "/login")
    assert login["Authorization"] == "Basic " + base64.b64encode(b"user:pass").decode()
    assert next(h for p, h in handler.seen if p == "/v3/forecast")["Authorization"] == "Bearer jwt"


def test_providers_need_their_credentials(monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    monkeypatch.delenv("WATTTIME_USER", raising=False)
    with pytest.raises(GreenlmError, match=r"needs an API token in \$ELECTRICITYMAPS_TOKEN"):
        open_grid(GridSettings(provider="electricitymaps:GB"), FALLBACK)
    with pytest.raises(GreenlmError, match=r"\$WATTTIME_USER"):
        open_grid(GridSettings(provider="watttime:CAISO_NORTH"), FALLBACK)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(csv="a.csv", provider="electricitymaps:GB"), "not both"),
        (dict(speed=60), "--replay-speed replays a CSV"),
        (dict(csv="a.csv", speed=0), "--replay-speed must be"),
        (dict(provider="solar:GB"), "PROVIDER:ZONE"),
        (dict(provider="electricitymaps"), "PROVIDER:ZONE"),
        (dict(csv="a.csv", forecast="psychic"), "--forecast must be one of"),
        (dict(provider="watttime:X", forecast="yesterday"), "a provider forecasts itself"),
        (dict(csv="a.csv", replay_from="yesterday noon"), "not an ISO 8601 time"),
    ],
)
def test_bad_grid_flags_say_what_to_do(kwargs, message):
    with pytest.raises(GreenlmError, match=message):
        GridSettings(**kwargs)


def test_durations():
    assert (
        parse_duration_s("24h", "x") == DAY
        and parse_duration_s("90m", "x") == 5400
        and parse_duration_s(30, "x") == 30
    )
    for bad in ("soon", "-1h", "0", ""):
        with pytest.raises(GreenlmError, match="duration"):
            parse_duration_s(bad, "--deadline")


def test_a_replay_starts_where_asked_and_continues_a_kept_origin(tmp_path):
    csv = tmp_path / "g.csv"
    csv.write_text("t,v\n2020-01-01T00:00:00Z,100\n2020-01-01T01:00:00Z,200\n2020-01-01T02:00:00Z,300\n")
    setup = open_grid(GridSettings(csv=str(csv), speed=3600, replay_from="2020-01-01T01:30"), FALLBACK)
    assert setup.signal.now().intensity_g_per_kwh == 200 and setup.clock.now_s() == pytest.approx(
        1577842200, abs=60
    )
    kept = open_grid(
        GridSettings(csv=str(csv), speed=3600), FALLBACK, origin_unix=setup.clock.origin_unix - 2
    )
    assert kept.signal.now().intensity_g_per_kwh == 300  # two wall seconds at 3600x: the third row
    with pytest.raises(GreenlmError, match="outside"):
        open_grid(GridSettings(csv=str(csv), replay_from="2021-01-01"), FALLBACK)
