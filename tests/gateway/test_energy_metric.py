"""A remote upstream's meter: the `--energy-metric` spec, and a Prometheus counter scraped over real HTTP (a
fake exporter the test drives) that grows, resets and wraps; `greenlm meter-agent`'s counter read the same way."""

from __future__ import annotations

import asyncio
import os
import re

import httpx
import pytest

from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.gateway.agent import MeterAgent, MeterAgentConfig, create_agent_app
from greenlm.gateway.energy_metric import PrometheusCounterMeter, parse_metric_spec
from tests.gateway.fakes import FakeExporter


@pytest.fixture
def exporter():
    fake = FakeExporter()
    yield fake
    fake.close()


def test_spec_units_from_the_known_table_the_name_or_the_suffix():
    dcgm = parse_metric_spec("http://gpu-box:9400/metrics#DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert (dcgm.unit, dcgm.source, dcgm.meter, dcgm.url) == (
        "mJ",
        "measured",
        "dcgm",
        "http://gpu-box:9400/metrics",
    )
    kepler = parse_metric_spec('http://n:9102/metrics#kepler_container_joules_total{container_name="vllm"}')
    assert (kepler.unit, kepler.source, kepler.labels) == ("J", "estimated", {"container_name": "vllm"})
    assert parse_metric_spec("http://n:9102/metrics#kepler_node_package_joules_total").source == "measured"
    agent = parse_metric_spec("http://h:9500/metrics#greenlm:energy_joules_total")
    assert agent.unit == "J" and agent.source is None  # from the series' own labels
    custom = parse_metric_spec("http://h/m#my_energy;unit=Wh;source=measured")
    assert (custom.unit, custom.j_per_unit, custom.source) == ("Wh", 3600.0, "measured")


@pytest.mark.parametrize(
    "spec, says",
    [
        ("http://h:9400/metrics", "names no metric"),
        ("ftp://h/metrics#x_joules_total", "not an http(s) URL"),
        ("http://h:99999/metrics#x_joules_total", "bad port"),
        ("http://h/metrics#gpu_power_usage", "the unit of gpu_power_usage is unknown"),
        ("http://h/metrics#x_joules_total;unit=cal", "unit 'cal' is unknown"),
        ("http://h/metrics#x_joules_total;rate=5", "is not understood"),
        ("http://h/metrics#x_joules_total{gpu=0}", 'is not name="value"'),
        ("http://h/metrics#9bad", "is not a metric name"),
    ],
)
def test_bad_specs_are_one_line(spec, says):
    with pytest.raises(GreenlmError, match=re.escape(says)):
        parse_metric_spec(spec)


def test_counter_sums_series_and_counts_a_reset_from_zero(exporter):
    exporter.series = {'gpu="0"': 1000.0, 'gpu="1"': 5000.0}  # mJ
    meter = PrometheusCounterMeter(parse_metric_spec(f"{exporter.url}#{exporter.metric}"))
    try:
        assert meter.series == 2 and meter.name == "dcgm" and meter.energy_source == "measured"
        a = meter.read()
        exporter.series = {'gpu="0"': 3000.0, 'gpu="1"': 6000.0}  # +2000 +1000 mJ
        b = meter.read()
        assert meter.measure(a, b).total_j == pytest.approx(3.0)
        exporter.series = {'gpu="0"': 400.0, 'gpu="1"': 6500.0}  # gpu 0 reset (driver restart): 400 new, +500
        c = meter.read()
        assert meter.measure(b, c).total_j == pytest.approx(0.9)
        exporter.series = {'gpu="0"': 400.0, 'gpu="1"': 6500.0, 'gpu="2"': 10**9}  # a new GPU: a baseline
        d = meter.read()
        assert meter.measure(c, d).total_j == pytest.approx(0.0)
        assert meter.measure(a, d).total_j == pytest.approx(3.9)  # windows add up across the reset
    finally:
        meter.close()


def test_a_32_bit_wrap_is_a_reset_and_a_label_filter_picks_one_series(exporter):
    exporter.metric = "node_energy_millijoules_total"
    exporter.series = {'gpu="0"': 2**32 - 100.0, 'gpu="1"': 7.0}
    meter = PrometheusCounterMeter(
        parse_metric_spec(f'{exporter.url}#node_energy_millijoules_total{{gpu="0"}}')
    )
    try:
        assert meter.series == 1 and meter.energy_source == "estimated"  # a name greenlm does not know
        a = meter.read()
        exporter.series = {'gpu="0"': 50.0, 'gpu="1"': 9.0e9}
        b = meter.read()
        assert meter.measure(a, b).total_j == pytest.approx(0.05)  # counts from zero after the wrap
    finally:
        meter.close()


def test_missing_metric_and_silent_endpoint_are_clear(exporter):
    exporter.series = {'gpu="0"': 1.0}
    with pytest.raises(GreenlmError, match="has no series DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION with labels"):
        PrometheusCounterMeter(parse_metric_spec(f'{exporter.url}#{exporter.metric}{{gpu="7"}}'))
    meter = PrometheusCounterMeter(parse_metric_spec(f"{exporter.url}#{exporter.metric}"))
    exporter.close()
    with pytest.raises(GreenlmError, match="no answer"):
        meter.read()
    meter.close()


def test_meter_agent_counter_reads_back_as_an_energy_metric():
    agent = MeterAgent(MeterAgentConfig(pid=os.getpid(), energy=EnergySettings(meter="cpu-model")))
    app = create_agent_app(agent)
    try:
        transport = httpx.ASGITransport(app=app)

        async def scrape():
            async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
                return (await client.get("/metrics")).text

        text = asyncio.run(scrape())
        assert 'greenlm:energy_joules_total{energy_source="estimated",meter="cpu-model",scope="pid:' in text
        sum(range(200_000))  # some CPU work between two scrapes
        second = asyncio.run(scrape())
        value = lambda t: float(t.split("greenlm:energy_joules_total{")[1].split("} ")[1].split()[0])  # noqa: E731
        assert value(second) > value(text) > 0
    finally:
        agent.close()


def test_meter_agent_refuses_a_pid_with_a_package_meter():
    with pytest.raises(GreenlmError, match="only the cpu-model estimate can"):
        MeterAgentConfig(pid=1, energy=EnergySettings(meter="rapl"))
    with pytest.raises(GreenlmError, match="unknown meter"):
        MeterAgentConfig(energy=EnergySettings(meter="watts"))
