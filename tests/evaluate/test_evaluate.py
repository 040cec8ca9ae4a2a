"""`evaluate` and `greenlm eval` as a user meets them: defaults, the store, variants, bad input."""

import json
import shutil
import sys

import pytest

import greenlm.evaluate.reference as reference_module
from greenlm.cli import main
from greenlm.errors import GreenlmError
from greenlm.evaluate import EvalConfig, evaluate, reference_stats
from greenlm.store import Store
from tests.evaluate.conftest import SMALL, WINDOW, write_manifest

FLAGS = ["--window-tokens", str(WINDOW), "--max-eval-tokens", str(4 * WINDOW)]


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture
def variant(variant_dir, reference_dir, tmp_path):
    """A copy of the perturbed model with a manifest naming the tiny reference as its parent."""
    path = shutil.copytree(variant_dir, tmp_path / "variant")
    write_manifest(path, str(reference_dir))
    return path


def refuse_engine(*_args, **_kwargs):
    raise AssertionError("a model was loaded although its statistics are cached")


def test_perplexity_only_then_from_the_cache(reference_dir, monkeypatch):
    config = EvalConfig(model=str(reference_dir), **SMALL)
    first = evaluate(config)
    assert first.reference is None and first.quality.kld is None and not first.model_cached
    assert first.quality.ppl == pytest.approx(
        reference_stats(str(reference_dir), None, **SMALL).quality().ppl
    )
    monkeypatch.setattr(reference_module, "create_engine", refuse_engine)
    second = evaluate(config)
    assert second.model_cached and second.quality.ppl == first.quality.ppl
    record = second.to_dict()
    assert record["kld"] is None and record["top1_agreement"] is None and record["ppl_reference"] is None


def test_variant_defaults_to_its_parent_and_is_stored(variant, reference_dir, tmp_path):
    notes = []
    with Store(tmp_path / "runs.db") as store:
        result = evaluate(EvalConfig(model=str(variant), **SMALL), store=store, announce=notes.append)
        rows = store.runs(kind="eval")
    assert result.reference == str(reference_dir) and result.reference_source == "variant parent"
    assert any("parent of variant" in n for n in notes) and result.notes == notes
    assert result.quality.kld > 0 and 0 < result.quality.top1_agreement < 1
    assert len(rows) == 1 and rows[0]["run_id"] == result.run_id
    assert rows[0]["parent"] == str(reference_dir) and rows[0]["execution"] == "simulated"
    assert json.loads(rows[0]["recipe_json"]) == [{"method": "noise"}]
    assert json.loads(rows[0]["record_json"])["kld"] == result.quality.kld


def test_reference_is_cached_across_variants(variant, reference_dir, monkeypatch):
    first = evaluate(EvalConfig(model=str(variant), reference=str(reference_dir), **SMALL))
    runs = []
    real = reference_module.create_engine
    monkeypatch.setattr(reference_module, "create_engine", lambda *a, **k: runs.append(a) or real(*a, **k))
    second = evaluate(EvalConfig(model=str(variant), reference=str(reference_dir), **SMALL))
    assert second.reference_cached and not runs  # the reference did not run again ...
    assert second.quality.eval_s > 0  # ... the model did
    assert second.quality.kld == pytest.approx(first.quality.kld, rel=1e-9)


def test_no_reference_for_a_variant(variant):
    result = evaluate(EvalConfig(model=str(variant), use_parent_reference=False, **SMALL))
    assert result.reference is None and result.quality.kld is None


def test_variant_whose_parent_is_gone(variant, tmp_path):
    write_manifest(variant, str(tmp_path / "deleted-parent"))
    with pytest.raises(GreenlmError, match="cannot be found here: pass --reference"):
        evaluate(EvalConfig(model=str(variant), **SMALL))


def test_cli_json_fields(monkeypatch, capsys, variant, reference_dir):
    code, out, err = run_cli(monkeypatch, capsys, "eval", "--model", str(variant), *FLAGS, "--json")
    assert code == 0, err
    record = json.loads(out)
    for field in (
        "model",
        "reference",
        "engine",
        "ppl",
        "ppl_reference",
        "ppl_increase_pct",
        "kld",
        "top1_agreement",
        "tokens_evaluated",
        "text",
        "wall_s",
        "window_tokens",
        "reference_cached",
        "kld_method",
        "kld_lower_bound",
        "ref_topk_mass",
        "run_id",
    ):
        assert field in record, field
    assert record["reference"] == str(reference_dir) and record["engine"] == "transformers"
    assert record["device"] == "cpu"  # --device auto (the default) on a machine without CUDA
    assert record["text"] == "builtin:pydoc-topics/evaluation"
    assert record["tokens_evaluated"] == 4 * (WINDOW - 1) and record["window_tokens"] == WINDOW
    assert record["ppl"] > 0 and record["kld"] > 0 and record["execution"] == "simulated"
    assert "parent of variant" in err  # the default reference is announced on stderr, not in the JSON

    code, out, _ = run_cli(monkeypatch, capsys, "runs", "--json")
    assert code == 0 and json.loads(out)[0]["run_id"] == record["run_id"]


def test_cli_table(monkeypatch, capsys, variant):
    code, out, _ = run_cli(monkeypatch, capsys, "eval", "--model", str(variant), *FLAGS)
    assert code == 0
    assert "KL divergence" in out and "lower bound" in out and "top-1 agreement" in out
    assert "stored as run" in out and "variant execution: simulated" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/model"], "not found"),
        (["--window-tokens", "0"], "--window-tokens must be at least 2"),
        (["--window-tokens", "512", "--max-eval-tokens", "100"], "less than one window"),
        (["--max-eval-tokens", "-5"], "--max-eval-tokens must be positive"),
        (["--top-k", "0"], "--top-k"),
        (["--engine", "vllm"], "unknown engine 'vllm'"),
        (["--reference", "x", "--no-reference"], "contradict"),
        (["--window-tokens", "many"], "Invalid value for '--window-tokens'"),
        (["--dtype", "int3"], "unknown dtype 'int3'"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_input_one_line_exit_2(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, "eval", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


def test_empty_and_short_text(monkeypatch, capsys, tmp_path, reference_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    code, _, err = run_cli(monkeypatch, capsys, "eval", "--model", str(reference_dir), "--text", str(empty))
    assert code == 2 and "is empty" in err
    short = tmp_path / "short.txt"
    short.write_text("one paragraph here\n\nanother one there\n\na third\n\nand a fourth one\n\nfive")
    code, _, err = run_cli(
        monkeypatch, capsys, "eval", "--model", str(reference_dir), "--text", str(short), *FLAGS
    )
    assert code == 2 and "fewer than one window" in err
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_vocabulary_mismatch_from_the_cli(monkeypatch, capsys, reference_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = AutoModelForCausalLM.from_pretrained(reference_dir)
    other.resize_token_embeddings(other.config.vocab_size + 8, mean_resizing=False)
    other.save_pretrained(tmp_path / "wider")
    AutoTokenizer.from_pretrained(reference_dir).save_pretrained(tmp_path / "wider")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--model",
        str(tmp_path / "wider"),
        "--reference",
        str(reference_dir),
        *FLAGS,
    )
    last = err.strip().splitlines()[-1]  # transformers' own load bars may precede it
    assert code == 2 and last.startswith("error:") and "vocabulary of 328 tokens" in last
