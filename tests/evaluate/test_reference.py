"""Reference statistics and comparison on tiny models: independent torch checks, the cache, the split."""

import re

import pytest
import torch
import torch.nn.functional as F

import greenlm.evaluate.reference as reference_module
from greenlm.data import load_text, split_text
from greenlm.engines import create_engine
from greenlm.errors import GreenlmError
from greenlm.evaluate import compare_to_reference, reference_stats
from greenlm.models import resolve_model
from tests.evaluate.conftest import SMALL, WINDOW


def hf_logprobs(model_dir, token_ids):
    """Next-token log-probs straight from transformers, float64: no greenlm code involved."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(token_ids).long()).logits
    return torch.log_softmax(logits[:, :-1].double(), -1)


def test_ppl_equals_exp_cross_entropy_from_torch(reference_dir):
    stats = reference_stats(str(reference_dir), None, **SMALL, use_cache=False)
    ids = stats.token_ids.long()
    assert stats.windows == 8 and ids.shape == (8, WINDOW)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    with torch.no_grad():
        logits = model(ids).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    quality = stats.quality()
    assert quality.ppl == pytest.approx(float(torch.exp(ce)), rel=1e-5)
    assert quality.tokens_evaluated == 8 * (WINDOW - 1)
    # The windows are the reference tokenizer's ids of the evaluation split, cut where `starts` says.
    engine = create_engine("transformers", resolve_model(str(reference_dir)))
    all_ids = engine.tokenize(split_text(load_text(None)).text("evaluation"))
    assert stats.text_tokens == len(all_ids)
    for row, start in zip(ids.tolist(), stats.starts, strict=True):
        assert row == all_ids[start : start + WINDOW]


def test_kld_and_agreement_match_an_independent_full_vocabulary_computation(reference_dir, variant_dir):
    stats = reference_stats(str(reference_dir), None, **SMALL)
    engine = create_engine("transformers", resolve_model(str(variant_dir)))
    quality = compare_to_reference(engine, stats)
    lp = hf_logprobs(reference_dir, stats.token_ids)
    lq = hf_logprobs(variant_dir, stats.token_ids)
    exact = float((lp.exp() * (lp - lq)).sum(-1).mean())
    top1 = float((lp.argmax(-1) == lq.argmax(-1)).double().mean())
    nll_model = -lq.gather(-1, stats.token_ids[:, 1:, None].long()).mean()
    assert 0.005 < exact < 0.5  # a real, non-trivial difference to measure
    assert quality.kld == pytest.approx(exact, rel=0.02)  # top-k exact + sampled tail: unbiased
    assert quality.kld_lower_bound <= exact
    assert quality.kld_lower_bound == pytest.approx(
        exact, rel=0.15
    )  # top-128 of 320 tokens: ~97% of the mass
    assert quality.top1_agreement == pytest.approx(top1, abs=1e-9)
    assert quality.ppl == pytest.approx(float(nll_model.exp()), rel=1e-5)
    assert quality.ppl_reference == pytest.approx(stats.quality().ppl, rel=1e-9)
    assert quality.ppl_increase_pct == pytest.approx(
        (quality.ppl / quality.ppl_reference - 1) * 100, rel=1e-6
    )
    assert 0.9 < quality.ref_topk_mass <= 1.0 and "unbiased estimate" in quality.kld_method
    assert "lower bound" in quality.kld_method
    assert quality.tokenizer_match is True


def test_reference_against_itself_is_identical(reference_dir):
    stats = reference_stats(str(reference_dir), None, **SMALL)
    engine = create_engine("transformers", resolve_model(str(reference_dir)))
    quality = compare_to_reference(engine, stats)
    assert quality.kld == pytest.approx(0.0, abs=1e-9) and quality.top1_agreement == 1.0
    assert quality.ppl == pytest.approx(quality.ppl_reference, rel=1e-6)


def test_screening_subset_uses_the_same_reference(reference_dir, variant_dir):
    stats = reference_stats(str(reference_dir), None, **SMALL)
    engine = create_engine("transformers", resolve_model(str(variant_dir)))
    screen = compare_to_reference(engine, stats, max_eval_tokens=2 * WINDOW)
    full = compare_to_reference(engine, stats)
    assert screen.windows == 2 and full.windows == 8 and screen.tokens_evaluated == 2 * (WINDOW - 1)
    assert screen.ppl_reference == pytest.approx(stats.quality(2 * WINDOW).ppl)
    assert screen.ppl_reference != pytest.approx(full.ppl_reference)  # different windows, same reference
    assert stats.select(2 * WINDOW) == [2, 6]  # spread through the windows, not the first two


def test_second_call_reads_the_cache_without_running_the_reference(reference_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("GREENLM_CACHE_DIR", str(tmp_path))  # no entries from other tests
    first = reference_stats(str(reference_dir), None, window_tokens=WINDOW, max_eval_tokens=3 * WINDOW)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the reference engine ran although its statistics are cached")

    monkeypatch.setattr(reference_module, "create_engine", refuse)
    second = reference_stats(str(reference_dir), None, window_tokens=WINDOW, max_eval_tokens=3 * WINDOW)
    assert second.cached and second.path == first.path and second.path.parent.name == "reference"
    for name in reference_module.TENSORS:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.probe_ids == first.probe_ids and second.starts == first.starts
    # Other window settings are another key: the reference must run again.
    with pytest.raises(AssertionError, match="ran although"):
        reference_stats(str(reference_dir), None, window_tokens=WINDOW, max_eval_tokens=4 * WINDOW)
    assert not list(first.path.parent.glob("*.tmp"))  # atomic writes leave no temporary files


def test_corrupt_cache_is_recomputed(reference_dir):
    settings = dict(window_tokens=WINDOW, max_eval_tokens=5 * WINDOW)
    first = reference_stats(str(reference_dir), None, **settings)
    first.path.write_bytes(b"not a safetensors file")
    notes = []
    again = reference_stats(str(reference_dir), None, **settings, announce=notes.append)
    assert not again.cached and "unreadable" in notes[0]
    assert torch.equal(again.topk_logp, first.topk_logp)
    assert reference_stats(str(reference_dir), None, **settings).cached


def test_windows_come_only_from_the_evaluation_split(reference_dir, tmp_path):
    words = "the value of a list is returned by the function when the loop ends".split()
    paragraphs = [
        f"marker{i:03d} " + " ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(120)
    ]
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(paragraphs))
    split = split_text(load_text(str(text)))
    evaluation = {int(m) for p in split.evaluation for m in re.findall(r"marker(\d{3})", p)}
    calibration = {int(m) for p in split.calibration for m in re.findall(r"marker(\d{3})", p)}
    assert evaluation and calibration
    stats = reference_stats(str(reference_dir), str(text), window_tokens=WINDOW, max_eval_tokens=6 * WINDOW)
    assert stats.text == f"{text}/evaluation"
    engine = create_engine("transformers", resolve_model(str(reference_dir)))
    seen = set()
    for row in stats.token_ids.tolist():
        seen |= {int(m) for m in re.findall(r"marker(\d{3})", engine.detokenize(row))}
    assert seen and seen <= evaluation
    assert min(seen) < sorted(evaluation)[len(evaluation) // 4]  # windows spread from the start ...
    assert max(seen) > sorted(evaluation)[3 * len(evaluation) // 4]  # ... to the end of the split


def test_vocabulary_mismatch_is_refused(reference_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = AutoModelForCausalLM.from_pretrained(reference_dir)
    other.resize_token_embeddings(other.config.vocab_size + 16, mean_resizing=False)
    other.save_pretrained(tmp_path / "wider")
    AutoTokenizer.from_pretrained(reference_dir).save_pretrained(tmp_path / "wider")
    stats = reference_stats(str(reference_dir), None, **SMALL)
    engine = create_engine("transformers", resolve_model(str(tmp_path / "wider")))
    with pytest.raises(GreenlmError, match="vocabulary of 336 tokens but the reference .* has 320"):
        compare_to_reference(engine, stats)


def test_window_longer_than_the_context_is_refused(reference_dir):
    # The tiny model's context is 512 tokens.
    with pytest.raises(GreenlmError, match="exceeds the context"):
        reference_stats(str(reference_dir), None, window_tokens=1024, max_eval_tokens=2048, use_cache=False)
