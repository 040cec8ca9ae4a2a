"""The final round on the tiny model: real engines, interleaved single-repeat measurements."""

from greenlm.energy.settings import EnergySettings
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.final import final_round, within_noise
from greenlm.optimize.row import CandidateRow, Loaded
from greenlm.optimize.space import Candidate


def tiny_settings(model_dir, workdir) -> EvalSettings:
    """A workload small enough for the tiny model: one short prompt, four new tokens."""
    return EvalSettings(
        model=str(model_dir), workdir=str(workdir), num_prompts=1, prompt_tokens=16, max_new_tokens=4,
        energy=EnergySettings(meter="cpu-model"), device="cpu",
    )  # fmt: skip


def test_final_round_measures_every_row_each_round(tiny_model_dir, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path)
    rows = [
        CandidateRow("base", "base", Candidate(), loaded=Loaded(model_path=str(tiny_model_dir))),
        CandidateRow("one", "one", Candidate(threads=1), loaded=Loaded(model_path=str(tiny_model_dir))),
    ]
    seen = []
    figures = final_round(settings, rows, 3, progress=lambda event: seen.append((event.done, event.total)))
    assert seen[-1] == (6, 6)
    for key in ("base", "one"):
        f = figures[key]
        assert f["rounds"] == 3 and len(f["per_round"]) == 3
        assert f["spread"]["min"] <= f["decode_j_per_token"] <= f["spread"]["max"]
        assert f["meter"] == "cpu-model" and f["energy_source"] == "estimated" and f["host"]


def test_within_noise_is_overlap_of_ranges():
    a = {"spread": {"min": 1.0, "max": 1.2}}
    assert within_noise(a, {"spread": {"min": 1.1, "max": 1.3}})
    assert not within_noise(a, {"spread": {"min": 1.25, "max": 1.3}})


def test_a_finalist_that_cannot_load_fails_in_one_line_and_leaves_no_process(tiny_model_dir, tmp_path):
    import multiprocessing

    import pytest

    from greenlm.errors import GreenlmError

    settings = tiny_settings(tiny_model_dir, tmp_path)
    rows = [
        CandidateRow("base", "base", Candidate(), loaded=Loaded(model_path=str(tiny_model_dir))),
        CandidateRow("gone", "gone", Candidate(), loaded=Loaded(model_path=str(tmp_path / "missing"))),
    ]
    with pytest.raises(GreenlmError, match="final round, gone: ") as info:
        final_round(settings, rows, 2)
    assert "\n" not in str(info.value)
    assert multiprocessing.active_children() == []
