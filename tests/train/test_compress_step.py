"""Distillation as a recipe step: `drop_layers` then `distill` is just another recipe, its training energy in
the step report and the manifest; the steps it cannot follow are refused in one line."""

from __future__ import annotations

import pytest

from greenlm.compress.config import CompressConfig
from greenlm.compress.pipeline import compress
from greenlm.compress.recipe import parse_recipe
from greenlm.errors import GreenlmError

DISTILL = {
    "method": "distill",
    "steps": 3,
    "seq_len": 32,
    "batch_size": 2,
    "precision": "fp32",
    "meter": "cpu-model",
}


def test_cut_then_heal_in_one_recipe(tiny_model_dir, tmp_path, small_text):
    result = compress(
        CompressConfig(
            recipe=[{"method": "drop_layers", "layers": [1]}, DISTILL],
            out=str(tmp_path / "v"),
            model=str(tiny_model_dir),
            text=str(small_text),
            eval_tokens=1024,
        )
    )
    m = result.manifest
    assert [s["method"] for s in m.steps] == ["drop_layers", "distill"] and m.execution == "real"
    training = m.steps[1]["details"]["training"]
    assert training["steps"] == 3 and training["energy"]["energy_j"] > 0
    assert m.training["energy_j"] == pytest.approx(training["energy"]["energy_j"])
    assert m.training["meter"] == "cpu-model" and m.training["tokens"] == 3 * 2 * 32
    assert m.quality["kld"] is not None  # measured after healing, against the parent


def test_distill_step_refusals(tiny_model_dir, tmp_path, small_text):
    with pytest.raises(GreenlmError, match="no training budget"):
        parse_recipe({"steps": [{"method": "distill"}]})
    with pytest.raises(GreenlmError, match="minutes must be"):
        parse_recipe({"steps": [{"method": "drop_layers", "count": 1}, {"method": "distill", "minutes": -2}]})
    cases = [
        ([DISTILL], "nothing to heal"),
        ([{"method": "wanda", "ratio": 0.5}, DISTILL], "simulated"),
        ([{"method": "rtn", "bits": 8, "kernel": "dense"}, DISTILL], "simulated step"),
        ([{"method": "rtn", "bits": 8, "kernel": "int8_weight_f32"}, DISTILL], "quantized modules"),
    ]
    for steps, needle in cases:
        with pytest.raises(GreenlmError, match=needle):
            compress(
                CompressConfig(
                    recipe=steps,
                    out=str(tmp_path / "v"),
                    model=str(tiny_model_dir),
                    text=str(small_text),
                    evaluate=False,
                    calibration_samples=4,
                    calibration_tokens=64,
                )
            )
        assert not (tmp_path / "v").exists()


def test_an_unknown_meter_fails_when_the_recipe_is_read():
    from greenlm.compress.distill import Distill

    with pytest.raises(GreenlmError, match="unknown meter 'watts'"):
        Distill(steps=1, meter="watts")
    with pytest.raises(GreenlmError, match="double count"):
        Distill(steps=1, meter="rapl+cpu-model")
