"""A real candidate evaluation on the tiny model: build, screen, measure, record."""

import pytest

from greenlm.energy.settings import EnergySettings
from greenlm.optimize.candidate import dominated_by, evaluate_candidate
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.pareto import QualityBudget
from greenlm.optimize.row import CandidateRow
from greenlm.optimize.space import Candidate


@pytest.fixture
def settings(tiny_model_dir, tmp_path):
    return EvalSettings(
        model=str(tiny_model_dir),
        workdir=str(tmp_path / "work"),
        screen_eval_tokens=512,
        eval_tokens=1024,
        num_prompts=1,
        prompt_tokens=16,
        max_new_tokens=4,
        repeats=2,
        energy=EnergySettings(meter="cpu-model"),
        budget=QualityBudget(1000.0, 1000.0),
    )


def test_baseline_is_measured_against_itself(settings):
    record = evaluate_candidate(settings, Candidate(), [])
    assert record.status == "measured", record.reason
    assert record.kld == pytest.approx(0.0, abs=1e-4) and record.quality.top1_agreement == 1.0
    assert record.decode_j_per_token > 0 and record.energy.energy_source == "estimated"
    assert record.loaded.size_mb > 0 and set(record.energy.phase_j_per_token) == {"prefill", "decode"}
    assert record.screen.eval_text.endswith("/evaluation")


def test_dropping_a_layer_costs_quality_and_is_real(settings):
    record = evaluate_candidate(settings, Candidate(recipe=({"method": "drop_layers", "count": 1},)), [])
    assert record.status == "measured", record.reason
    assert record.kld > 0 and record.execution == "real"


def test_hopeless_candidate_rejected_by_screen(settings):
    settings.budget = QualityBudget(1.0, 1e-6)
    record = evaluate_candidate(settings, Candidate(recipe=({"method": "drop_layers", "count": 1},)), [])
    assert record.status == "rejected-screen" and "screen KLD" in record.reason
    assert record.energy is None and "decode_j_per_token" not in record.to_dict()


def test_bad_recipe_is_a_failed_record_not_a_crash(settings):
    record = evaluate_candidate(settings, Candidate(recipe=({"method": "no_such_method"},)), [])
    assert record.status == "failed" and "no_such_method" in record.reason


def test_skip_needs_a_measured_member_running_the_same_way_better_and_clearly_cheaper():
    member = CandidateRow.from_dict({
        "key": "m", "label": "m", "engine": "llamacpp", "threads": 1, "speculative": None, "device": "cpu",
        "screen_kld": 0.01, "probe_j_per_token": 0.10, "size_mb": 50.0,
    })  # fmt: skip
    q8 = Candidate(engine="llamacpp", quant_type="q8_0", threads=1)
    assert dominated_by(q8, "cpu", 0.02, 0.12, [member], 0.05) is member  # worse and 20% costlier
    assert dominated_by(q8, "cpu", 0.02, 0.104, [member], 0.05) is None  # within the probe's noise margin
    assert dominated_by(q8, "cpu", 0.005, 0.12, [member], 0.05) is None  # better quality: may be on the front
    assert dominated_by(q8, "cuda", 0.02, 0.12, [member], 0.05) is None  # another device
    two = Candidate(engine="llamacpp", quant_type="q8_0", threads=2)
    assert dominated_by(two, "cpu", 0.02, 0.12, [member], 0.05) is None  # other threads cost differently
    lookup = Candidate(engine="llamacpp", quant_type="q8_0", threads=1, speculative="prompt-lookup")
    assert dominated_by(lookup, "cpu", 0.02, 0.12, [member], 0.05) is None  # other decoding
    unprobed = CandidateRow.from_dict({k: v for k, v in member.to_dict().items() if k != "probe_j_per_token"})
    assert dominated_by(q8, "cpu", 0.02, 0.12, [unprobed], 0.05) is None  # size alone never skips


def test_a_baseline_is_measured_whatever_the_screen_says(settings):
    settings.budget = QualityBudget(1.0, 1e-6)
    cut = Candidate(recipe=({"method": "drop_layers", "count": 1},))
    record = evaluate_candidate(settings, cut, None)  # front None: judged as a baseline
    assert record.status == "measured", record.reason
    assert record.probe.probe_j_per_token > 0 and record.screen.screen_kld > 1e-6


def test_speculative_candidates_need_llamacpp_and_keep_plain_keys():
    from greenlm.errors import GreenlmError

    plain = Candidate(engine="llamacpp", quant_type="q8_0", threads=1)
    fast = Candidate(engine="llamacpp", quant_type="q8_0", threads=1, speculative="prompt-lookup")
    assert "speculative" not in plain.to_dict() and fast.key != plain.key
    assert fast.label.endswith("+prompt-lookup")
    with pytest.raises(GreenlmError, match="llamacpp"):
        Candidate(speculative="prompt-lookup")
    with pytest.raises(GreenlmError, match="unknown"):
        Candidate(engine="llamacpp", speculative="medusa")


def test_gptq_codes_run_in_llamacpp_as_gguf_blocks(settings):
    candidate = Candidate(recipe=({"method": "gptq"},), engine="llamacpp", quant_type="codes", threads=1)
    record = evaluate_candidate(settings, candidate, [])
    assert record.status == "measured", record.reason
    assert record.loaded.model_path.endswith("-codes.gguf") and record.execution == "real"
    assert 0 < record.kld < 0.5 and record.decode_j_per_token > 0


def test_codes_from_a_grid_no_gguf_type_matches_fail_with_the_reason(settings):
    recipe = ({"method": "rtn", "bits": 4, "group_size": 64},)
    record = evaluate_candidate(settings, Candidate(recipe=recipe, engine="llamacpp", quant_type="codes"), [])
    assert record.status == "failed" and "no GGUF-format codes" in record.reason, record.reason


def test_a_mixed_file_with_gptq_codes_among_the_types_is_measured(settings):
    candidate = Candidate(
        engine="llamacpp",
        quant_type="mixed",
        mixed_max_kld=0.5,
        codes_from=(({"method": "gptq"},),),
        threads=1,
    )
    record = evaluate_candidate(settings, candidate, [])
    assert record.status == "measured", record.reason
    assert "mixed-" in record.loaded.model_path and record.kld < 0.5


def test_a_healed_cut_carries_its_training_energy(settings):
    recipe = ({"method": "drop_layers", "count": 1}, {"method": "distill", "steps": 2, "seq_len": 32})
    record = evaluate_candidate(settings, Candidate(recipe=recipe), [])
    assert record.status == "measured", record.reason
    assert record.training_energy_j > 0 and record.training.training_carbon_g > 0
