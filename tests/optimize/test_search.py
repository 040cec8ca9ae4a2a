import pytest

from greenlm.errors import GreenlmError
from greenlm.optimize.config import EvalSettings, OptimizeConfig, parse_duration_s, parse_percent
from greenlm.optimize.pareto import QualityBudget
from greenlm.optimize.search import optimize
from greenlm.store import Store
from tests.optimize.fake_work import fake_work

SPACE = """
grids:
  - engine: llamacpp
    quant_types: [q8_0, q6_k, q4_k_m, q4_0]
"""


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    store = Store(tmp_path / "s.db")

    def config(**kw):
        budget = kw.pop("budget", QualityBudget(3.0, 0.05))
        settings = EvalSettings(model=str(tiny_model_dir), budget=budget, workdir=str(tmp_path / "work"))
        return OptimizeConfig(settings=settings, space=str(space), **kw)

    yield config, store
    store.close()


def test_chooses_least_cost_inside_budget(setup):
    config, store = setup
    result = optimize(config(), store=store, work=fake_work)
    out = result.to_dict()
    assert out["budget_met"] and out["chosen"]["quant_type"] == "q4_k_m"
    assert out["j_per_token_ratio"] == pytest.approx(0.5 / 0.12)
    assert out["candidates_evaluated"] == 5  # baseline + 4
    assert [p["quant_type"] for p in out["pareto"]] == ["q4_0", "q4_k_m", "q8_0", "q6_k", None]
    assert len(store.runs(kind="candidate")) == 5


def test_impossible_budget_says_so_with_closest(setup):
    config, store = setup
    out = optimize(config(budget=QualityBudget(0.0, 0.0)), store=store, work=fake_work).to_dict()
    assert not out["budget_met"] and out["chosen"] is None
    assert out["closest"][0]["quant_type"] == "q6_k"  # smallest excess over the budget


def test_resume_does_not_redo_stored_candidates(setup):
    config, store = setup
    first = optimize(config(max_candidates=2), store=store, work=fake_work)
    assert len(first.rows) == 3 and first.stopped_by == "candidate budget"
    calls = []

    def counting(candidate, front):
        calls.append(candidate.key)
        return fake_work(candidate, front)

    second = optimize(config(resume=True), store=store, work=counting)
    assert second.search_id == first.search_id
    assert len(calls) == 2 and len(second.rows) == 5
    assert not set(calls) & {r["key"] for r in first.rows}


def test_resume_without_history(setup):
    config, store = setup
    with pytest.raises(GreenlmError, match="nothing to resume"):
        optimize(config(resume=True), store=store, work=fake_work)


def test_time_budget_stops_starting_candidates(setup, monkeypatch):
    config, store = setup
    clock = iter(range(0, 10_000, 100))  # every perf_counter call advances 100 s
    monkeypatch.setattr("greenlm.optimize.search.time.perf_counter", lambda: float(next(clock)))
    result = optimize(config(time_budget_s=250), store=store, work=fake_work)
    assert result.stopped_by == "time budget" and len(result.rows) < 5


def test_front_is_passed_to_work(setup):
    config, store = setup
    result = optimize(config(), store=store, work=fake_work)
    assert max(r["front_size_seen"] for r in result.rows) >= 1


@pytest.mark.parametrize("text, value", [("20m", 1200.0), ("90s", 90.0), ("1h30m", 5400.0), ("45", 45.0)])
def test_durations(text, value):
    assert parse_duration_s(text) == value


@pytest.mark.parametrize("bad", ["soon", "0s", "-5m"])
def test_bad_durations(bad):
    with pytest.raises(GreenlmError):
        parse_duration_s(bad)


def test_percent():
    assert parse_percent("3%") == 3.0
    with pytest.raises(GreenlmError, match=">= 0"):
        parse_percent("-1")


def test_bad_config_values(tiny_model_dir):
    with pytest.raises(GreenlmError, match="max-ppl-increase"):
        OptimizeConfig(settings=EvalSettings(budget=QualityBudget(-1, 0.05)))
    with pytest.raises(GreenlmError, match="max-candidates"):
        OptimizeConfig(max_candidates=0)


def test_unreachable_ray_address_is_one_clear_error(setup):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config, store = setup
    with pytest.raises(GreenlmError, match="cannot reach the Ray cluster"):
        optimize(config(executor="ray", ray_address=f"127.0.0.1:{port}"), store=store, work=fake_work)


def test_ray_executor_runs_candidates_as_tasks(setup):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    config, store = setup
    try:
        result = optimize(config(executor="ray"), store=store, work=fake_work)
    finally:
        ray.shutdown()
    out = result.to_dict()
    assert out["budget_met"] and out["chosen"]["quant_type"] == "q4_k_m"
    assert len(result.rows) == 5 and all(r["host"] for r in result.rows)
