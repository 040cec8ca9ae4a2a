"""`greenlm eval` on the real built-in SmolLM2-135M (select with `-m realmodel`)."""

import json
import sys

import pytest

from greenlm.cli import main

pytestmark = pytest.mark.realmodel


def test_builtin_against_itself(monkeypatch, capsys):
    args = ["eval", "--reference", "smollm2-135m", "--window-tokens", "256", "--max-eval-tokens", "1024"]
    monkeypatch.setattr(sys, "argv", ["greenlm", *args, "--json"])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    r = json.loads(captured.out)
    assert r["model"] == r["reference"] == "smollm2-135m" and r["text"] == "builtin:pydoc-topics/evaluation"
    assert r["tokens_evaluated"] == 4 * 255 and r["windows"] == 4
    # The same weights on the same engine: identical distributions, whatever the text.
    assert r["kld"] == pytest.approx(0.0, abs=1e-6) and r["top1_agreement"] == 1.0
    assert r["ppl"] == pytest.approx(r["ppl_reference"], rel=1e-6)
    # A trained model, not a random one: far below the 49152-token uniform perplexity, its top-128 tokens
    # holding most of its probability.
    assert 1 < r["ppl"] < 100 and r["ref_topk_mass"] > 0.8
    assert r["tokenizer_match"] is True and r["wall_s"] > 0
