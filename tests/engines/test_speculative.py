"""Speculative greedy decoding: prompt-lookup proposals, config checks, and output identical to plain greedy."""

from __future__ import annotations

import json

import pytest

from greenlm.engines.speculative import PromptLookupDrafter, SpeculativeConfig, speculative_from_flags
from greenlm.errors import GreenlmError
from tests.helpers import build_tiny_model, export_gguf, needs_llamacpp, sample_ids

# ---- prompt lookup ----------------------------------------------------------------------------------------


def test_prompt_lookup_prefers_the_longest_ngram():
    # tail (2, 3, 4): the 3-gram occurs at 1 (followed by 6, 1); the 2-gram (3, 4) occurs later, at 6.
    history = [5, 2, 3, 4, 6, 1, 3, 4, 8, 2, 3, 4]
    assert PromptLookupDrafter(1, 3).propose(history, 2) == [6, 1]
    assert PromptLookupDrafter(1, 2).propose(history, 2) == [8, 2]  # only up to 2-grams: the latest


def test_prompt_lookup_takes_the_most_recent_match_and_caps_at_k():
    history = [7, 1, 2, 7, 3, 4, 5, 7]
    assert PromptLookupDrafter(1, 3).propose(history, 3) == [3, 4, 5]
    assert PromptLookupDrafter(1, 3).propose(history, 1) == [3]
    # a match near the end proposes what there is, fewer than k
    assert PromptLookupDrafter(1, 1).propose([9, 8, 9], 4) == [8, 9]


def test_prompt_lookup_without_a_match_proposes_nothing():
    assert PromptLookupDrafter(1, 3).propose([1, 2, 3, 4], 4) == []
    assert PromptLookupDrafter(2, 3).propose([1, 5, 2, 5], 4) == []  # only a 1-gram matches
    assert PromptLookupDrafter(1, 3).propose([1], 4) == []
    assert PromptLookupDrafter(1, 3).propose([1, 1, 1], 0) == []


def test_prompt_lookup_on_a_repeating_sequence_continues_the_loop():
    history = [1, 2, 3] * 4
    assert PromptLookupDrafter(1, 3).propose(history, 5) == [1, 2, 3]  # the last match ends at the tail


# ---- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "beam"}, "unknown --speculative 'beam'"),
        ({"kind": "prompt-lookup", "draft_tokens": 0}, "--draft-tokens must be a whole number from 1 to 16"),
        ({"kind": "prompt-lookup", "draft_tokens": 17}, "--draft-tokens"),
        ({"kind": "prompt-lookup", "draft_tokens": 2.5}, "--draft-tokens"),
        ({"kind": "prompt-lookup", "draft_tokens": True}, "--draft-tokens"),
        ({"kind": "prompt-lookup", "ngram_min": 0}, "--ngram-min"),
        ({"kind": "prompt-lookup", "ngram_max": 99}, "--ngram-max"),
        ({"kind": "prompt-lookup", "ngram_min": 3, "ngram_max": 2}, "larger than --ngram-max"),
        ({"kind": "draft"}, "--speculative draft needs --draft-model"),
        ({"kind": "draft", "draft_model": " "}, "needs --draft-model"),
        ({"kind": "prompt-lookup", "draft_model": "x.gguf"}, "only used by --speculative draft"),
    ],
)
def test_nonsense_settings_are_refused(kwargs, message):
    with pytest.raises(GreenlmError, match=message):
        SpeculativeConfig(**kwargs)


def test_flags_build_the_config_and_refuse_orphans():
    assert speculative_from_flags(None) is None
    config = speculative_from_flags("prompt-lookup", draft_tokens=6)
    assert config == SpeculativeConfig("prompt-lookup", draft_tokens=6, ngram_min=1, ngram_max=3)
    assert config.to_dict()["draft_model"] is None
    with pytest.raises(GreenlmError, match="--draft-tokens only applies to speculative decoding"):
        speculative_from_flags(None, draft_tokens=4)
    with pytest.raises(GreenlmError, match="--draft-model only applies"):
        speculative_from_flags(None, draft_model="d.gguf")


def test_transformers_engine_refuses_speculative(tiny_model_dir):
    from greenlm.engines import create_engine
    from greenlm.models import resolve_model
    from greenlm.workload import MeasureConfig

    lookup = SpeculativeConfig("prompt-lookup")
    with pytest.raises(GreenlmError, match="not supported by the transformers engine"):
        MeasureConfig(engine="transformers", speculative=lookup)
    with pytest.raises(GreenlmError, match="not supported by the transformers engine"):
        create_engine("transformers", resolve_model(str(tiny_model_dir)), speculative=lookup)
    with pytest.raises(GreenlmError, match="must be a SpeculativeConfig"):
        MeasureConfig(engine="llamacpp", speculative={"kind": "draft"})
    assert (
        MeasureConfig(engine="llamacpp", speculative=lookup).to_dict()["speculative"]["kind"]
        == "prompt-lookup"
    )


# ---- decoding on tiny GGUF files --------------------------------------------------------------------------


def _varied_model(path, *, seed: int, layers: int = 2):
    """A tiny model whose greedy text varies: the tiny model's tied head mostly repeats the last token (any
    draft would agree), so the head gets its own random weights."""
    import torch
    from transformers import LlamaForCausalLM

    build_tiny_model(path, layers=layers, seed=seed)
    model = LlamaForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = False
    torch.manual_seed(seed + 100)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """(a tiny model as float32 GGUF, another tiny model with other weights as q8_0 GGUF, prompts)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("speculative")
    target_dir = _varied_model(root / "target", seed=0)
    target = export_gguf(target_dir, root / "tiny.gguf").out
    other = export_gguf(
        _varied_model(root / "other", seed=7, layers=1), root / "other-q8_0.gguf", quant="q8_0"
    )
    ids = sample_ids(AutoTokenizer.from_pretrained(target_dir))
    return target, other.out, [ids[:12], ids[20:27], ids[5:30]]


def _engine(path, speculative=None):
    from greenlm.engines import create_engine
    from greenlm.models import resolve_model

    return create_engine("llamacpp", resolve_model(str(path)), threads=1, speculative=speculative)


@pytest.fixture(scope="module")
def plain(ggufs):
    """Plain greedy decoding of each prompt: the reference output."""
    target, _other, prompts = ggufs
    engine = _engine(target)
    try:
        alone = [engine.decode(engine.prefill([p]), 24).token_ids[0] for p in prompts]
        assert all(len(set(tokens)) > 4 for tokens in alone), "greedy text this flat tests nothing"
        yield {"alone": alone}
    finally:
        engine.close()


@needs_llamacpp
@pytest.mark.parametrize("draft_tokens", [1, 4, 16])
def test_prompt_lookup_output_is_plain_greedy(ggufs, plain, draft_tokens):
    target, _other, prompts = ggufs
    engine = _engine(target, SpeculativeConfig("prompt-lookup", draft_tokens=draft_tokens))
    try:
        drafted = 0
        for prompt, expected in zip(prompts, plain["alone"], strict=True):
            result = engine.decode(engine.prefill([prompt]), 24)
            assert result.token_ids == [expected]
            assert result.decode_tokens == 24 and result.steps == 24
            assert result.accepted_tokens <= result.drafted_tokens
            # every pass yields its own token plus the accepted drafts
            assert result.target_passes == 24 - result.accepted_tokens
            drafted += result.drafted_tokens
        assert drafted > 0, "the tiny model's greedy text repeats itself: lookup must find matches"
        with pytest.raises(GreenlmError, match="one sequence at a time"):
            engine.decode(engine.prefill(prompts), 24)
    finally:
        engine.close()


@needs_llamacpp
def test_draft_model_identical_to_the_target_accepts_everything(ggufs, plain):
    target, _other, prompts = ggufs
    engine = _engine(target, SpeculativeConfig("draft", draft_tokens=4, draft_model=str(target)))
    try:
        for prompt, expected in zip(prompts, plain["alone"], strict=True):
            result = engine.decode(engine.prefill([prompt]), 24)
            assert result.token_ids == [expected]
            assert result.drafted_tokens > 0 and result.accepted_tokens == result.drafted_tokens
            assert result.target_passes == 24 // 5 + (1 if 24 % 5 else 0)  # 4 drafts + 1 own token per pass
        info = engine.describe()["speculative"]
        assert info["kind"] == "draft" and info["acceptance_rate_since_load"] == 1.0
        assert info["draft_gguf"] == str(target) and info["draft_quant_type"] == "f32"
    finally:
        engine.close()


@needs_llamacpp
def test_a_different_draft_model_changes_speed_not_output(ggufs, plain):
    target, other, prompts = ggufs
    engine = _engine(target, SpeculativeConfig("draft", draft_tokens=3, draft_model=str(other)))
    try:
        alone = [engine.decode(engine.prefill([p]), 24) for p in prompts]
        assert [r.token_ids[0] for r in alone] == plain["alone"]
        assert all(r.drafted_tokens > 0 for r in alone)
        assert sum(r.accepted_tokens for r in alone) < sum(r.drafted_tokens for r in alone)
        # the draft cache follows the history: the prompts again, in another order, give the same again
        for prompt, expected in reversed(list(zip(prompts, plain["alone"], strict=True))):
            assert engine.decode(engine.prefill([prompt]), 24).token_ids == [expected]
        assert engine.describe()["speculative"]["draft_quant_type"] == "q8_0"
    finally:
        engine.close()


@needs_llamacpp
def test_draft_cache_drops_what_the_target_rejected(ggufs):
    """After a rejection the draft model continues from the accepted history exactly as a fresh one would."""
    from greenlm.engines.speculative import make_drafter

    target, other, prompts = ggufs
    engine = _engine(target)
    config = SpeculativeConfig("draft", draft_model=str(other))
    drafter, fresh = make_drafter(config, engine), make_drafter(config, engine)
    try:
        history = list(prompts[2])
        first = drafter.propose(history, 4)
        assert len(first) == 4
        diverged = [*history, *first[:1], (first[1] + 1) % engine.n_vocab]  # one kept, then a rejection
        assert drafter.propose(diverged, 4) == fresh.propose(diverged, 4)
        draft = drafter.engine
        memory = draft.lib.llama_get_memory(draft._ctx)
        assert draft.lib.llama_memory_seq_pos_max(memory, 0) == len(diverged) + 4 - 2  # drafts 1..3 fed
        # another history altogether: the cache starts over from their common prefix (none)
        assert drafter.propose(list(prompts[0]), 2) == fresh.propose(list(prompts[0]), 2)
        assert draft.lib.llama_memory_seq_pos_max(memory, 0) == len(prompts[0])
    finally:
        drafter.close()
        fresh.close()
        engine.close()


@needs_llamacpp
def test_switching_speculative_off_and_short_decodes(ggufs, plain):
    target, _other, prompts = ggufs
    engine = _engine(target, SpeculativeConfig("draft", draft_tokens=8, draft_model=str(target)))
    try:
        one = engine.decode(engine.prefill([prompts[0]]), 1)  # no room to draft: one plain pass
        assert one.token_ids == [plain["alone"][0][:2]] and one.drafted_tokens == 0
        three = engine.decode(engine.prefill([prompts[0]]), 3)  # drafts capped to what is left to make
        assert three.token_ids == [plain["alone"][0][:4]] and three.target_passes == 1
        engine.set_speculative(None)
        assert engine.speculative_summary() is None and "speculative" not in engine.describe()
        result = engine.decode(engine.prefill([prompts[1]]), 24)
        assert result.token_ids == [plain["alone"][1]] and result.drafted_tokens == 0
    finally:
        engine.close()


@needs_llamacpp
def test_missing_draft_model_is_one_clear_error(ggufs, tmp_path):
    target, _other, _prompts = ggufs
    with pytest.raises(GreenlmError, match="--draft-model: .* not found"):
        _engine(target, SpeculativeConfig("draft", draft_model=str(tmp_path / "none.gguf")))


@needs_llamacpp
def test_measure_reports_speculative_and_acceptance(ggufs, monkeypatch, capsys):
    from tests.helpers import run_cli

    target, other, _prompts = ggufs
    common = ["measure", "--model", str(target), "--engine", "llamacpp", "--threads", "1", "--repeats", "1"]
    common += [
        "--num-prompts",
        "2",
        "--prompt-tokens",
        "16",
        "--max-new-tokens",
        "12",
        "--meter",
        "cpu-model",
    ]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *common,
        "--speculative",
        "draft",
        "--draft-model",
        str(other),
        "--draft-tokens",
        "3",
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    spec = record["speculative"]
    assert spec["kind"] == "draft" and spec["draft_tokens"] == 3 and spec["draft_model"] == str(other)
    assert spec["drafted_tokens"] > 0 and spec["accepted_tokens"] <= spec["drafted_tokens"]
    assert record["acceptance_rate"] == pytest.approx(spec["accepted_tokens"] / spec["drafted_tokens"])
    assert record["per_repeat"][0]["decode_tokens"] == 2 * 11
    assert record["config"]["speculative"]["kind"] == "draft"

    code, out, err = run_cli(monkeypatch, capsys, *common, "--speculative", "prompt-lookup")
    assert code == 0, err
    assert "speculative: prompt-lookup, 4 draft tokens" in out and "identical to greedy" in out

    code, out, _ = run_cli(monkeypatch, capsys, *common, "--json")
    assert code == 0
    plain = json.loads(out)
    assert plain["speculative"] is None and plain["acceptance_rate"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--speculative", "prompt-lookup"], "not supported by the transformers engine"),
        (["--engine", "llamacpp", "--speculative", "beam"], "unknown --speculative 'beam'"),
        (["--engine", "llamacpp", "--speculative", "draft"], "needs --draft-model"),
        (["--engine", "llamacpp", "--speculative", "prompt-lookup", "--draft-tokens", "0"], "--draft-tokens"),
        (["--engine", "llamacpp", "--draft-tokens", "3"], "add --speculative"),
        (
            ["--engine", "llamacpp", "--speculative", "prompt-lookup", "--draft-model", "d.gguf"],
            "only used by",
        ),
        (
            ["--engine", "llamacpp", "--speculative", "draft", "--draft-model", "/no/such.gguf"],
            "--draft-model: model",
        ),
        (["--engine", "llamacpp", "--speculative", "prompt-lookup", "--draft-tokens", "x"], "Invalid value"),
        (["--engine", "llamacpp", "--speculative", "prompt-lookup", "--batch-size", "2"], "--batch-size 1"),
    ],
)
def test_cli_flag_errors_are_one_line(monkeypatch, capsys, args, message):
    from tests.helpers import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "measure", *args)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


@pytest.mark.realmodel
@needs_llamacpp
def test_draft_with_another_tokenizer_is_refused(ggufs):
    """The built-in model (49k-token vocabulary) cannot draft for the tiny one (320 tokens)."""
    target, _other, _prompts = ggufs
    with pytest.raises(GreenlmError, match="does not share tiny.gguf's tokenizer|does not share .*tokenizer"):
        _engine(target, SpeculativeConfig("draft", draft_model="smollm2-135m"))
