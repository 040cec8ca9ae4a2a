"""`greenlm export` and `greenlm engines` as a user runs them, and evaluation through the exported file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp


def _run(monkeypatch, capsys, *args) -> tuple[str, str]:
    from greenlm.cli import main

    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return captured.out, captured.err


def test_export_json_reports_the_file(monkeypatch, capsys, tmp_path, tiny_model_dir):
    out, _err = _run(
        monkeypatch,
        capsys,
        "export",
        "--model",
        str(tiny_model_dir),
        "--quant",
        "q8_0",
        "--out",
        str(tmp_path / "t.gguf"),
        "--json",
    )
    record = json.loads(out)
    assert record["quant_type"] == "q8_0" and record["format"] == "gguf" and record["arch"] == "llama"
    assert record["file_mb"] == pytest.approx((tmp_path / "t.gguf").stat().st_size / 1e6, abs=1e-3)
    assert record["tensor_types"]["by_type"]["q8_0"]["tensors"] == 2 * 7 + 1  # + token embedding
    assert record["tokenizer_check"].startswith("llama.cpp and transformers agree")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]


def test_export_table_names_tensor_types(monkeypatch, capsys, tmp_path, tiny_model_dir):
    out, err = _run(
        monkeypatch, capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "t.gguf")
    )
    assert "f16" in out and "tensor type" in out and "written by: gguf" in out
    assert "writing f16 GGUF" in err


def test_engines_lists_both(monkeypatch, capsys):
    out, _err = _run(monkeypatch, capsys, "engines", "--json")
    found = {e["engine"]: e for e in json.loads(out)}
    assert found["llamacpp"]["usable"] and found["llamacpp"]["version"]
    assert found["transformers"]["usable"]


def test_eval_through_llamacpp_matches_its_transformers_reference(tmp_path, tiny_model_dir, tiny_gguf):
    """Part 3 of the issue: the same windows and token ids, against the same cached reference."""
    from greenlm.evaluate import EvalConfig, evaluate

    settings = dict(
        reference=str(tiny_model_dir), window_tokens=64, max_eval_tokens=256, top_k=16, tail_samples=8
    )
    through_llamacpp = evaluate(EvalConfig(model=tiny_gguf, engine="llamacpp", **settings))
    through_transformers = evaluate(EvalConfig(model=str(tiny_model_dir), engine="transformers", **settings))
    assert through_llamacpp.engine == "llamacpp"
    assert through_llamacpp.engine_info["quant_type"] == "f32"
    assert through_llamacpp.quality.windows == through_transformers.quality.windows == 4
    # one reference, computed by the first evaluation and read from the cache by the second
    assert through_llamacpp.reference_cache == through_transformers.reference_cache
    assert through_transformers.reference_cached is True
    assert through_llamacpp.quality.ppl == pytest.approx(through_transformers.quality.ppl, rel=1e-3)
    assert abs(through_llamacpp.quality.kld) < 1e-4
    assert through_llamacpp.quality.top1_agreement > 0.98
    row, hf_row = through_llamacpp.to_dict(), through_transformers.to_dict()
    assert row["engine"] == "llamacpp" and row["quant_type"] == "f32"
    assert row["file_mb"] == pytest.approx(Path(tiny_gguf).stat().st_size / 1e6, abs=0.01)
    assert hf_row["engine"] == "transformers" and "quant_type" not in hf_row
    assert row.keys() - {"quant_type", "file_mb"} == hf_row.keys()  # otherwise the same fields


def test_eval_json_through_llamacpp(monkeypatch, capsys, tiny_model_dir, tmp_path):
    """`greenlm eval --engine llamacpp --json`, with a reference and perplexity only: engine, quant_type and
    file_mb at the top level, as `greenlm measure --json` has them."""
    gguf = tmp_path / "tiny-q8_0.gguf"
    _run(monkeypatch, capsys, "export", "--model", str(tiny_model_dir), "--quant", "q8_0", "--out", str(gguf))
    settings = ["--window-tokens", "64", "--max-eval-tokens", "128", "--top-k", "8", "--tail-samples", "4"]
    for extra in (["--reference", str(tiny_model_dir)], []):
        out, _err = _run(
            monkeypatch,
            capsys,
            "eval",
            "--model",
            str(gguf),
            "--engine",
            "llamacpp",
            *settings,
            *extra,
            "--json",
        )
        record = json.loads(out)
        assert record["engine"] == "llamacpp" and record["quant_type"] == "q8_0"
        assert record["file_mb"] == pytest.approx(gguf.stat().st_size / 1e6, abs=0.01)
        assert record["windows"] == 2 and record["ppl"] > 1


def test_export_of_a_gptq_variant_says_it_wrote_the_codes(monkeypatch, capsys, tmp_path, tiny_model_dir):
    from greenlm.compress.pipeline import CompressConfig, compress

    compress(
        CompressConfig(
            recipe=[{"method": "gptq", "kernel": "dense"}],
            out=str(tmp_path / "gptq4"),
            model=str(tiny_model_dir),
            calibration_samples=4,
            calibration_tokens=64,
            evaluate=False,
        )
    )
    out, _err = _run(
        monkeypatch, capsys, "export", "--model", str(tmp_path / "gptq4"), "--out", str(tmp_path / "m.gguf")
    )
    assert "greenlm codes: 14 weight matrices written as the variant's own q4_0 blocks" in out
    assert "bit for bit" in out and "written by: greenlm gptq codes as q4_0 blocks" in out
    out, _err = _run(
        monkeypatch,
        capsys,
        "export",
        "--model",
        str(tmp_path / "gptq4"),
        "--out",
        str(tmp_path / "r.gguf"),
        "--no-codes",
        "--json",
    )
    record = json.loads(out)
    assert record["quant_type"] == "q4_0" and record["codes"] is None
    assert any("--no-codes" in n for n in record["notes"])


def test_export_mixed_reports_its_choice(monkeypatch, capsys, tmp_path, tiny_model_dir):
    args = [
        "export",
        "--model",
        str(tiny_model_dir),
        "--mixed",
        "--max-kld",
        "0.001",
        "--candidates",
        "q8_0,q4_0",
    ]
    args += ["--calibration-samples", "2", "--calibration-tokens", "64"]
    out, _err = _run(monkeypatch, capsys, *args, "--out", str(tmp_path / "m.gguf"), "--json")
    record = json.loads(out)
    assert record["quant_type"] == "mixed" and record["mixed"]["measured_kld"] <= 0.001
    assert (
        set(record["mixed"]["choice"].values()) <= {"q8_0", "q4_0"} and len(record["mixed"]["choice"]) == 15
    )
    out, _err = _run(monkeypatch, capsys, *args, "--out", str(tmp_path / "t.gguf"))
    assert "mixed types for energy:" in out and "MB read per decoded token" in out


def test_mixed_flags_without_mixed_are_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir):
    from greenlm.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "greenlm",
            "export",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "m.gguf"),
            "--max-kld",
            "0.1",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --max-kld applies to --mixed: add --mixed or drop it"
    assert list(tmp_path.iterdir()) == []
