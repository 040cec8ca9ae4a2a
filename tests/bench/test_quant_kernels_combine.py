"""bench/quant_kernels.py's figures over several processes: median, range, verdict against float32."""

from quant_kernels import auto_choice, combine


def rows(decode_bf16, decode_f32, prefill_bf16=0.6):
    return [
        {
            "kernel": "int8_weight_bf16",
            "weights": "int8 per channel",
            "activations": "bfloat16",
            "weight_only": True,
            "auto_candidate": True,
            "error": None,
            "decode_speedup_vs_float32": decode_bf16,
            "prefill_speedup_vs_float32": prefill_bf16,
        },
        {
            "kernel": "int8_weight_f32",
            "weights": "int8 per channel",
            "activations": "float32",
            "weight_only": True,
            "auto_candidate": True,
            "error": None,
            "decode_speedup_vs_float32": decode_f32,
            "prefill_speedup_vs_float32": None,
        },
    ]


def test_each_figure_is_the_median_over_processes_with_its_range_and_verdict():
    combined = {r["kernel"]: r for r in combine([rows(1.3, 1.17), rows(1.5, 0.44), rows(1.4, 0.9)])}
    bf16, f32 = combined["int8_weight_bf16"], combined["int8_weight_f32"]
    assert bf16["decode_speedup_vs_float32"] == 1.4
    assert bf16["decode_speedup_range"] == [1.3, 1.5]
    assert bf16["decode_speedup_per_process"] == [1.3, 1.5, 1.4]
    assert bf16["decode_vs_float32"] == "faster"  # 0.4 from 1.0, range 0.2 wide
    assert bf16["prefill_vs_float32"] == "slower"  # the same 0.6 in every process
    # the two runs a week apart that issue 23's re-run found: one process says faster, another slower
    assert f32["decode_vs_float32"] == "within noise"
    assert f32["prefill_speedup_vs_float32"] is None and "prefill_speedup_range" not in f32


def test_auto_chooses_by_the_median_and_says_whether_every_process_agreed():
    auto = auto_choice(combine([rows(1.3, 0.5), rows(1.02, 0.5), rows(1.4, 0.5)]))
    assert auto["int8 per channel"] == {
        "kernel": "int8_weight_bf16",
        "execution": "real",
        "in_every_process": False,
    }
    auto = auto_choice(combine([rows(0.9, 0.5), rows(1.02, 0.5), rows(1.2, 0.5)]))
    assert auto["int8 per channel"]["execution"] == "simulated"
