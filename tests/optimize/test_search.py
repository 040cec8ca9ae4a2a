import pytest

from greenlm.errors import GreenlmError
from greenlm.optimize.config import EvalSettings, OptimizeConfig, parse_duration_s, parse_percent
from greenlm.optimize.pareto import QualityBudget
from greenlm.optimize.row import TrainingCost
from greenlm.optimize.search import optimize
from greenlm.store import Store
from tests.optimize.fake_work import fake_final, fake_work

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
    result = optimize(config(), store=store, work=fake_work, final=fake_final)
    out = result.to_dict()
    assert out["budget_met"] and out["chosen"]["quant_type"] == "q4_k_m"
    assert out["j_per_token_ratio"] == pytest.approx(0.5 / 0.12)
    assert out["candidates_evaluated"] == 5  # baseline + 4
    assert [p["quant_type"] for p in out["pareto"]] == ["q4_0", "q4_k_m", "q8_0", "q6_k", None]
    assert len(store.runs(kind="candidate")) == 5


def test_impossible_budget_says_so_with_closest(setup):
    config, store = setup
    out = optimize(
        config(budget=QualityBudget(0.0, 0.0)), store=store, work=fake_work, final=fake_final
    ).to_dict()
    assert not out["budget_met"] and out["chosen"] is None
    assert out["closest"][0]["quant_type"] == "q6_k"  # smallest excess over the budget


def test_resume_does_not_redo_stored_candidates(setup):
    config, store = setup
    first = optimize(config(max_candidates=2), store=store, work=fake_work, final=fake_final)
    assert len(first.rows) == 3 and first.stopped_by == "candidate budget"
    calls = []

    def counting(candidate, front):
        calls.append(candidate.key)
        return fake_work(candidate, front)

    second = optimize(config(resume=True), store=store, work=counting, final=fake_final)
    assert second.search_id == first.search_id
    assert len(calls) == 2 and len(second.rows) == 5
    assert not set(calls) & {r.key for r in first.rows}


def test_resume_without_history(setup):
    config, store = setup
    with pytest.raises(GreenlmError, match="nothing to resume"):
        optimize(config(resume=True), store=store, work=fake_work, final=fake_final)


def test_time_budget_stops_starting_candidates(setup, monkeypatch):
    config, store = setup
    clock = iter(range(0, 10_000, 100))  # every perf_counter call advances 100 s
    monkeypatch.setattr("greenlm.optimize.search.time.perf_counter", lambda: float(next(clock)))
    result = optimize(config(time_budget_s=250), store=store, work=fake_work, final=fake_final)
    assert result.stopped_by == "time budget" and len(result.rows) < 5


def test_front_is_passed_to_work(setup):
    config, store = setup
    result = optimize(config(), store=store, work=fake_work, final=fake_final)
    assert max(r.extra["front_size_seen"] or 0 for r in result.rows) >= 1


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
        optimize(
            config(executor="ray", ray_address=f"127.0.0.1:{port}"),
            store=store,
            work=fake_work,
            final=fake_final,
        )


def test_ray_executor_runs_candidates_as_tasks(setup):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    config, store = setup
    try:
        result = optimize(config(executor="ray"), store=store, work=fake_work, final=fake_final)
    finally:
        ray.shutdown()
    out = result.to_dict()
    assert out["budget_met"] and out["chosen"]["quant_type"] == "q4_k_m"
    assert len(result.rows) == 5 and all(r.host for r in result.rows)


def test_the_final_round_decides_and_says_when_the_top_two_are_within_noise(setup):
    config, store = setup
    first = optimize(config(search_id="a"), store=store, work=fake_work, final=fake_final)
    keys = {r.candidate.quant_type: r.key for r in first.rows}
    assert first.chosen.candidate.quant_type == "q4_k_m"  # cheapest inside the budget at search time

    def swapped(settings, rows, rounds, progress=None):  # quiet re-measurement: q8_0 is the cheaper one
        return fake_final(settings, rows, rounds, swap=(keys["q4_k_m"], keys["q8_0"]))

    out = optimize(config(search_id="b"), store=store, work=fake_work, final=swapped).to_dict()
    assert out["chosen"]["quant_type"] == "q8_0"
    assert out["j_per_token_ratio"] == pytest.approx(0.5 / 0.12)  # the final-round figures
    roles = {r["role"] for r in out["final_round"]}
    assert roles == {"finalist", "baseline"} and len(out["final_round"]) == 4  # 3 finalists + baseline

    def tied(settings, rows, rounds, progress=None):
        figures = fake_final(settings, rows, rounds)
        figures[keys["q8_0"]] = dict(figures[keys["q4_k_m"]], decode_j_per_token=0.121)
        return figures

    out = optimize(config(search_id="c"), store=store, work=fake_work, final=tied).to_dict()
    assert any("within noise" in n for n in out["notes"])


def test_a_gguf_model_gets_both_baselines_and_both_ratios(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = EvalSettings(model=None, workdir=str(tmp_path / "work"))  # the built-in GGUF
    with Store(tmp_path / "s.db") as store:
        out = optimize(
            OptimizeConfig(settings=settings, space=str(space)), store=store, work=fake_work, final=fake_final
        ).to_dict()
    assert out["baseline"]["engine"] == "transformers" and out["natural_baseline"]["engine"] == "llamacpp"
    assert out["chosen"]["quant_type"] == "q4_k_m"
    assert out["j_per_token_ratio"] == pytest.approx(0.5 / 0.12)
    assert out["j_per_token_ratio_natural"] == pytest.approx(0.15 / 0.12)
    assert {r["role"] for r in out["final_round"]} == {"finalist", "baseline", "natural-baseline"}


def test_the_model_as_given_is_chosen_when_nothing_beats_it(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = EvalSettings(model=None, workdir=str(tmp_path / "work"))  # the built-in GGUF

    def as_is_cheapest(candidate, front):
        record = fake_work(candidate, front)
        if candidate.engine == "llamacpp" and candidate.quant_type is None:
            record.energy.decode_j_per_token, record.energy.decode_tokens_per_s = 0.09, 1 / 0.09
        return record

    with Store(tmp_path / "s.db") as store:
        out = optimize(
            OptimizeConfig(settings=settings, space=str(space)),
            store=store,
            work=as_is_cheapest,
            final=fake_final,
        ).to_dict()
    assert out["chosen"]["key"] == out["natural_baseline"]["key"]
    assert out["j_per_token_ratio_natural"] == pytest.approx(1.0)
    assert any("nothing in the space cost less than the model as given" in n for n in out["notes"])


def test_a_simulated_variant_is_never_chosen(setup):
    config, store = setup

    def simulated_cheapest(candidate, front):
        record = fake_work(candidate, front)
        if candidate.quant_type == "q4_k_m":
            record.execution = "simulated"
        return record

    out = optimize(config(), store=store, work=simulated_cheapest, final=fake_final).to_dict()
    assert out["chosen"]["quant_type"] == "q8_0"
    assert all(p["execution"] != "simulated" for p in out["pareto"])


def test_an_existing_out_dir_is_refused_before_any_work(setup, tmp_path):
    config, store = setup
    (tmp_path / "taken").mkdir()

    def never(*_args):
        pytest.fail("a candidate was evaluated before --out was checked")

    with pytest.raises(GreenlmError, match="already exists"):
        optimize(config(out=str(tmp_path / "taken")), store=store, work=never, final=fake_final)


def test_without_a_final_round_other_hosts_make_the_ratio_not_comparable(setup):
    config, store = setup

    def elsewhere(candidate, front):
        record = fake_work(candidate, front)
        if front is not None:  # candidates on a worker, the baseline in the driver
            record.host = "worker-7"
        return record

    out = optimize(config(final_rounds=0), store=store, work=elsewhere, final=fake_final).to_dict()
    assert out["chosen"] is not None and not out["comparable"]
    assert out["j_per_token_ratio"] is None
    assert any("host" in n and "not comparable" in n for n in out["notes"])


def test_a_trained_candidates_payback_is_in_the_summary(setup):
    config, store = setup

    def work(candidate, front):
        record = fake_work(candidate, front)
        if candidate.quant_type == "q4_k_m":
            record.training = TrainingCost(training_energy_j=380.0)
        return record

    out = optimize(config(), store=store, work=work, final=fake_final).to_dict()
    chosen = out["chosen"]
    assert chosen["quant_type"] == "q4_k_m" and chosen["training_energy_j"] == 380.0
    # 380 J / (0.5 - 0.12) J/token saved against float32 transformers (also the natural baseline here)
    assert chosen["payback_tokens"] == pytest.approx(1000.0)
    assert chosen["payback_tokens_natural"] == pytest.approx(1000.0)
    assert all(p.get("payback_tokens") is None for p in out["pareto"] if p["key"] != chosen["key"])
