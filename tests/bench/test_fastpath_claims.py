"""bench/fastpath.py's front and greenlm-vs-uniform claims hold only beyond the rows' noise."""

import fastpath
from spread import WITHIN_NOISE
from tables import fastpath_markdown


def file_row(name, group, kld, j, low, high, threads="2"):
    speed = {"decode_tokens_per_s": 50.0, "decode_j_per_token": j, "spread_j": {"min": low, "max": high}}
    return {
        "name": name,
        "group": group,
        "type": "q4_0",
        "kld": kld,
        "ppl": 15.0,
        "bytes": 90e6,
        "bits_per_weight": 5.5,
        "speed": {"1": dict(speed), threads: dict(speed)},
    }


def rows():
    return [
        # uniform q8_0: the least KLD, clearly the dearest
        file_row("llama.cpp q8_0", "uniform", 0.0010, 0.400, 0.39, 0.41),
        # uniform q4_1: the best KLD, 0.280 J/token with a wide range
        file_row("llama.cpp q4_1", "uniform", 0.0034, 0.280, 0.26, 0.33),
        # uniform q4_0: cheap and poor
        file_row("llama.cpp q4_0", "uniform", 0.2880, 0.249, 0.24, 0.26),
        # greenlm gptq-q4_1: cheaper than q4_1 by medians only, a hair more KLD
        file_row("greenlm gptq-q4_1", "greenlm", 0.0035, 0.260, 0.23, 0.31),
        # greenlm awq-q4_0: clearly cheaper than every uniform row with no more KLD (q4_1)
        file_row("greenlm awq-q4_0", "greenlm", 0.1347, 0.200, 0.195, 0.205),
        # greenlm rtn-q4_0: worse KLD than q4_0 and clearly dearer: dominated
        file_row("greenlm rtn-q4_0", "greenlm", 0.2900, 0.300, 0.295, 0.305),
    ]


def test_statuses_follow_the_noise_rule():
    by_name = {w["name"]: w for w in fastpath.wins(rows(), "2")}
    gptq = by_name["greenlm gptq-q4_1"]
    assert gptq["status"] == WITHIN_NOISE
    assert gptq["within_noise_of"] == ["llama.cpp q4_1"] and gptq["dominated_by"] == []
    awq = by_name["greenlm awq-q4_0"]
    assert awq["status"] == "undominated"
    assert awq["energy_margin_vs"] == "llama.cpp q4_1" and awq["energy_margin_energy"] == "higher"
    rtn = by_name["greenlm rtn-q4_0"]
    assert rtn["status"] == "dominated" and rtn["dominated_by"] == ["llama.cpp q4_0"]


def test_front_marks_members_whose_place_rests_on_noise():
    front = fastpath.pareto(rows(), "2")
    assert front["llama.cpp q8_0"] == "clear"  # nothing has less KLD
    assert front["llama.cpp q4_1"] == "clear"  # the one row with less KLD (q8_0) is dearer beyond the noise
    # q4_1 has less KLD and is dearer only within both ranges
    assert front["greenlm gptq-q4_1"] == WITHIN_NOISE
    # the cheapest of all, but gptq-q4_1 (less KLD) is dearer only within gptq-q4_1's own range
    assert front["greenlm awq-q4_0"] == WITHIN_NOISE
    assert "greenlm rtn-q4_0" not in front and "llama.cpp q4_0" not in front


def test_markdown_says_which_claims_are_within_noise():
    rs = rows()
    result = {
        "threads": 2,
        "rows": rs,
        "pareto": {"2": fastpath.pareto(rs, "2")},
        "greenlm_vs_uniform": fastpath.wins(rs, "2"),
        "reference": "the float reference",
        "energy_source": "estimated",
        "meter": "cpu-model",
        "workload": {"repeats": 5},
        "targets": {
            "gptq_q4_0_kld": 0.14,
            "llamacpp_q4_0_kld": 0.29,
            "llamacpp_q4_0_imatrix_kld": 0.17,
            "beats_q4_0": True,
            "beats_q4_0_imatrix": True,
        },
        "sensitivity_check": {"spearman_rank_correlation": 0.9, "matrices": 40},
    }
    text = fastpath_markdown(result)
    assert "| greenlm gptq-q4_1 ~ |" in text and "| llama.cpp q4_1 * |" in text
    assert "0.230-0.310" in text  # the range column
    undominated = next(line for line in text.splitlines() if line.startswith("Undominated"))
    assert "greenlm awq-q4_0" in undominated and "gptq" not in undominated
    assert "greenlm gptq-q4_1 (vs llama.cpp q4_1)" in text
