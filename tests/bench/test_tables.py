"""The tables the README renders: compression rows against the reference, the adaptive trace's energy split."""

import pytest
from tables import adapt_trace_markdown, compression_markdown, energy_split_change


def compression_row(name, label, execution, j, low, high, vs=None):
    return {
        "name": name,
        "label": label,
        "execution": execution,
        "ppl": 15.0,
        "ppl_increase_pct": None if name == "reference" else 1.0,
        "kld": 0.0,
        "top1_agreement": 1.0,
        "size_mb": 500.0,
        "decode_tokens_per_s": 20.0,
        "decode_j_per_token": j,
        "spread_j": {"min": low, "max": high},
        **({"vs_reference": vs} if vs else {}),
    }


def test_compression_rows_say_lower_or_within_noise_and_simulated_stays_in_parentheses():
    report = {
        "decode_workload": {"repeats": 5, "engine": "transformers"},
        "rows": [
            compression_row("reference", "float32 (reference)", "real", 0.75, 0.70, 0.80),
            compression_row(
                "int8", "int8 RTN", "real", 0.50, 0.48, 0.52, {"change": -1 / 3, "relation": "lower"}
            ),
            compression_row(
                "wanda",
                "Wanda 50%",
                "simulated",
                0.73,
                0.65,
                0.82,
                {"change": -0.03, "relation": "within noise"},
            ),
        ],
    }
    text = compression_markdown(report)
    assert "| 0.500 (0.480-0.520) | -33% (lower) |" in text
    assert "| (0.730 (0.650-0.820)) | (within noise) |" in text
    assert "medians of 5 interleaved rounds" in text


def split(total_static, dynamic, memory, core_s, duration_s, idle_w=1.5):
    return {
        "static_j": total_static,
        "dynamic_j": dynamic,
        "memory_j": memory,
        "total_j": total_static + dynamic + memory,
        "core_s": core_s,
        "duration_s": duration_s,
        "idle_watts_per_core": idle_w,
        "interval_s": 0.5,
        "gap_rel": 0.001,
    }


def test_saving_with_and_without_the_static_charge_of_released_cores():
    # static server: 2 cores for 100 s (300 J static at 1.5 W/core); adaptive: 1 core half the time
    static = {"energy_split": split(300.0, 500.0, 20.0, core_s=200.0, duration_s=100.0)}
    adaptive = {"energy_split": split(225.0, 450.0, 20.0, core_s=150.0, duration_s=100.0)}
    change = energy_split_change(static, adaptive)
    assert change["as_charged"] == pytest.approx(695 / 820 - 1)
    assert change["released_core_s"] == pytest.approx(50.0)
    assert change["released_static_j"] == pytest.approx(75.0)
    # charged for the released core-seconds too, the saving is the dynamic part's alone (same memory)
    assert change["without_release_credit"] == pytest.approx(770 / 820 - 1)
    assert change["dynamic_only"] == pytest.approx(-0.1)
    assert energy_split_change({"energy_split": None}, adaptive) is None


def server(energy_j, split_record=None):
    return {
        "requests": 10,
        "errors": 0,
        "energy_j": energy_j,
        "carbon_g": 0.1,
        "slo_attainment": 0.9,
        "ttft_p90_s": 1.0,
        "tpot_p90_s": 0.1,
        "tokens_per_j": 2.0,
        "mean_kld_served": 0.003,
        "decisions": 3,
        "meter": "cpu-model",
        "energy_source": "estimated",
        "energy_split": split_record,
    }


def trace_report(s, a, change=None):
    return {
        "day_s": 720,
        "slo": {"ttft_s": 2, "tpot_s": 0.2},
        "max_kld": 0.05,
        "static_variant": "as-is",
        "static": s,
        "adaptive": a,
        "energy_split_change": change,
        "ladder": [{"name": "as-is", "kld": 0.0034, "decode_j_per_token": 0.18, "inside_budget": True}],
    }


def test_trace_markdown_renders_the_split_when_the_json_has_it_and_not_before():
    old = adapt_trace_markdown(trace_report(server(820.0), server(695.0)))
    assert "static, allotted cores" not in old and "without the static charge" not in old
    assert "| as-is | 0.0034 | 0.1800 | yes |" in old  # the ladder behind the prose's "far outside it"
    s = server(820.0, split(300.0, 500.0, 20.0, 200.0, 100.0))
    a = server(695.0, split(225.0, 450.0, 20.0, 150.0, 100.0))
    text = adapt_trace_markdown(trace_report(s, a, energy_split_change(s, a)))
    assert "| - static, allotted cores (J) | 300.0 | 225.0 | -25.0% |" in text
    assert "| - dynamic, busy core-seconds (J) | 500.0 | 450.0 | -10.0% |" in text
    assert "without the static charge of the cores the adaptive server released (50 core-seconds" in text
    assert ": -6.1%; dynamic energy alone: -10.0%" in text
