"""Tests on the real built-in SmolLM2-135M (select with `-m realmodel`; `make test` runs them too)."""

import json
import sys

import pytest
import torch

from greenlm.cli import main
from greenlm.energy import get_meter
from greenlm.models import load_model, resolve_model
from greenlm.models.loader import gguf_cache_path

pytestmark = pytest.mark.realmodel


def test_cache_reproduces_gguf_weights_and_loads_faster():
    spec = resolve_model(None)
    first = load_model(spec)  # dequantizes (or finds the session's cache from an earlier test)
    second = load_model(spec)
    assert second.load_source == "cache" and (gguf_cache_path(spec) / "model.safetensors").is_file()
    if first.load_source == "gguf-dequantize":
        assert second.load_s < first.load_s / 5
    ids = torch.tensor([second.tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        a, b = first.model(ids).logits, second.model(ids).logits
    assert torch.equal(a, b)  # the cache holds the very same float32 weights
    assert first.model.config.num_hidden_layers == 30


def test_measure_builtin_json(monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "greenlm",
            "measure",
            "--num-prompts",
            "1",
            "--prompt-tokens",
            "32",
            "--max-new-tokens",
            "8",
            "--repeats",
            "2",
            "--json",
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    record = json.loads(captured.out)
    assert record["model"] == "smollm2-135m" and record["engine"] == "transformers"
    # `auto` is whatever this machine has (rapl, cpu-model, plus nvml on a GPU host): ask it, do not assume
    with get_meter("auto") as expected:
        assert record["meter"] == expected.name and record["energy_source"] == expected.energy_source
    split = [
        record[f"{phase}_{part}_j_per_token"]
        for phase in ("prefill", "decode")
        for part in ("static", "dynamic")
    ]
    if "cpu-model" in record["meter"]:
        assert all(v > 0 for v in split)
    else:
        assert split == [None] * 4  # a hardware counter measures the package whole
    assert all(v["meter"] in record["meter"].split("+") for v in record["energy_domains"].values())
    assert record["decode_j_per_token"] > 0 and record["prefill_j_per_token"] > 0
    assert record["decode_tokens_per_s"] > 0 and record["text"] == "builtin:pydoc-topics/evaluation"
    assert record["run_id"]
