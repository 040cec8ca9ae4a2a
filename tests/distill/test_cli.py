"""`greenlm distill` as a user meets it: a cut variant in, a healed variant out that every verb loads; every
mistake one line and exit 2 with nothing written; Ctrl-C keeps the checkpoint and --resume finishes the run."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

import greenlm.train.loop as loop
from greenlm.cli import main
from greenlm.models import load_model, resolve_model
from greenlm.models.manifest import read_manifest

FLAGS = [
    "--seq-len",
    "32",
    "--batch-size",
    "2",
    "--precision",
    "fp32",
    "--eval-tokens",
    "1024",
    "--threads",
    "1",
]


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_distill_a_variant_then_eval_measure_and_payback(
    monkeypatch, capsys, tiny_model_dir, student_dir, tmp_path
):
    out = tmp_path / "healed"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "distill", "--teacher", tiny_model_dir, "--student", student_dir, "--steps", "4",
        "--out", out, *FLAGS, "--meter", "cpu-model", "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    assert r["steps"] == 4 and r["tokens"] == 4 * 2 * 32 and r["energy_j"] > 0 and r["carbon_g"] > 0
    assert r["meter"] == "cpu-model" and r["energy_source"] == "estimated"
    assert r["quality_before"]["kld"] is not None and r["quality_after"]["kld"] is not None
    assert r["forecast_error_pct"] is not None and r["run_id"]
    assert not (tmp_path / "healed.ckpt").exists()  # removed after success

    manifest = read_manifest(out)
    assert manifest.parent["name"] == str(tiny_model_dir)
    assert [s["method"] for s in manifest.recipe["steps"]] == ["drop_layers", "distill"]
    assert manifest.training["energy_j"] == pytest.approx(r["energy_j"])
    assert manifest.training["loss"]["loss"] == "jsd" and manifest.training["tokens"] == 256
    assert manifest.steps[-1]["details"]["training"]["data"]["text"].endswith("/calibration")
    loaded = load_model(resolve_model(str(out)))
    assert loaded.model.config.num_hidden_layers == 1

    code, stdout, err = run_cli(
        monkeypatch, capsys, "eval", "--model", out, "--max-eval-tokens", "1024", "--json"
    )
    assert code == 0, err
    payback = json.loads(stdout)["payback"]
    assert payback["status"] == "unmeasured" and "measure both" in payback["message"]

    for model in (tiny_model_dir, out):
        code, _, err = run_cli(
            monkeypatch, capsys, "measure", "--model", model, "--num-prompts", "1", "--prompt-tokens", "8",
            "--max-new-tokens", "4", "--repeats", "1", "--meter", "cpu-model", "--threads", "1",
        )  # fmt: skip
        assert code == 0, err
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--model", out, "--max-eval-tokens", "1024")
    assert code == 0, err
    assert "payback:" in stdout and ("served tokens" in stdout or "never pays back" in stdout)


def test_student_recipe_and_human_output(monkeypatch, capsys, tiny_model_dir, tmp_path, small_text):
    recipe = tmp_path / "cut.yaml"
    recipe.write_text("steps:\n  - {method: prune_channels, ratio: 0.5, multiple_of: 8}\n")
    code, stdout, err = run_cli(
        monkeypatch, capsys, "distill", "--teacher", tiny_model_dir, "--student-recipe", recipe, "--tokens", "128",
        "--text", small_text, "--calibration-samples", "4", "--calibration-tokens", "64", "--out", tmp_path / "v",
        *FLAGS, "--loss", "reverse-kl", "--meter", "cpu-model",
    )  # fmt: skip
    assert code == 0, err
    assert "quality vs teacher" in stdout and "forecast after 1 of 2 steps" in stdout
    assert "ESTIMATED" in stdout and "saved to" in stdout
    manifest = read_manifest(tmp_path / "v")
    assert [s["method"] for s in manifest.recipe["steps"]] == ["prune_channels", "distill"]
    assert manifest.architecture["intermediate_size"] == 64


def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes(
    monkeypatch, capsys, tiny_model_dir, student_dir, tmp_path
):
    out, ckpt = tmp_path / "v", tmp_path / "v.ckpt"
    args = ["distill", "--teacher", tiny_model_dir, "--student", student_dir, "--steps", "5", "--out", out,
            *FLAGS, "--no-eval", "--checkpoint-steps", "2", "--meter", "cpu-model"]  # fmt: skip
    real_loss, calls = loop.distill_loss, {"n": 0, "at": 1}

    def interrupt_mid_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(loop, "distill_loss", interrupt_mid_step)
    code, _, err = run_cli(monkeypatch, capsys, *args)  # inside step 1: no checkpoint yet, nothing to keep
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert not ckpt.exists() and not out.exists()

    calls.update(n=0, at=4)  # inside step 4: steps 1-3 done, the checkpoint of step 2 on disk
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert "--resume" in err and not out.exists()
    assert (ckpt / "latest").read_text().strip() == "step-000002"

    monkeypatch.setattr(loop, "distill_loss", real_loss)
    code, stdout, err = run_cli(
        monkeypatch, capsys, *args, "--lr", "0.01", "--resume"
    )  # another run's settings
    one_line_error(code, err, "belongs to another run", "settings")
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--resume", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert (
        r["steps"] == 5
        and "resumed at step 2" in " ".join(r["notes"])
        and r["energy"]["earlier_sessions_j"] > 0
    )
    assert not ckpt.exists() and out.is_dir()


def test_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, tiny_model_dir, student_dir, tmp_path):
    other_vocab = tmp_path / "other-vocab"
    config = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(other_vocab)
    shutil.copy(tiny_model_dir / "tokenizer.json", other_vocab)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", other_vocab)
    same_size = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, same_size)
    tiny_text = tmp_path / "tiny.txt"
    tiny_text.write_text("One short paragraph.\n\nAnother short one.\n\nAnd a third.\n")
    base = ["distill", "--teacher", tiny_model_dir, "--out", tmp_path / "v", *FLAGS, "--meter", "cpu-model"]
    cases = [
        (["--student", other_vocab, "--steps", "2"], ["vocabulary of 200 tokens", "same tokenizer"]),
        (["--student", same_size, "--steps", "2"], ["not fewer than the teacher"]),
        (["--student", student_dir, "--steps", "0"], ["--steps must be a whole number of at least 1"]),
        (["--student", student_dir, "--minutes", "-1"], ["--minutes must be a number of minutes > 0"]),
        (["--student", student_dir, "--tokens", "0"], ["--tokens must be"]),
        (["--student", student_dir], ["no training budget"]),
        (["--student", student_dir, "--steps", "2", "--text", tiny_text], ["fewer than one batch"]),
        (["--student", student_dir, "--steps", "2", "--resume"], ["--resume: no checkpoint"]),
        (["--steps", "2"], ["--student DIR", "neither"]),
        (["--student", student_dir, "--steps", "2", "--loss", "kl"], ["unknown --loss 'kl'"]),
    ]
    for extra, needles in cases:
        code, stdout, err = run_cli(monkeypatch, capsys, *base, *extra)
        one_line_error(code, err, *needles)
        assert stdout == "" and not (tmp_path / "v").exists() and not (tmp_path / "v.ckpt").exists(), extra
