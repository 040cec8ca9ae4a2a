"""Distillation on the real built-in SmolLM2-135M (select with `-m realmodel`): cut two layers, heal for a
few steps, and the result is a variant llama.cpp can take."""

from __future__ import annotations

import pytest

from greenlm.distill import DistillConfig, distill
from greenlm.energy.settings import EnergySettings
from greenlm.export import ExportConfig, export_model
from greenlm.models.manifest import read_manifest
from greenlm.train.settings import TrainSettings

pytestmark = pytest.mark.realmodel


def test_cut_heal_and_export_the_builtin_model(tmp_path, small_text):
    out = tmp_path / "drop2-kd"
    result = distill(
        DistillConfig(
            out=str(out),
            student_recipe=[{"method": "drop_layers", "count": 2}],
            text=str(small_text),
            train=TrainSettings(steps=3, seq_len=64, batch_size=2),
            calibration_samples=8,
            calibration_tokens=128,
            evaluate=False,
            energy=EnergySettings(meter="cpu-model"),
        )
    ).to_dict()
    assert result["steps"] == 3 and result["tokens"] == 3 * 2 * 64 and result["energy_j"] > 0
    assert result["architecture"]["num_hidden_layers"] == 28
    assert all(loss > 0 for loss in (result["loss_first"], result["loss_last"]))
    # three steps are less than one epoch: a top-k cache would never be reused, so the teacher runs on the fly
    assert result["data"]["teacher"].startswith("on the fly"), result["data"]["teacher"]
    manifest = read_manifest(out)
    assert manifest.training["teacher"]["name"] == "smollm2-135m"
    assert [s["method"] for s in manifest.recipe["steps"]] == ["drop_layers", "distill"]

    gguf = export_model(ExportConfig(out=str(tmp_path / "healed.gguf"), model=str(out), quant="f16"))
    assert gguf.layers == 28 and gguf.tokenizer_check
