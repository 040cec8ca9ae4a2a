"""Candidate rows at the store boundary: a stored object reads back and writes out unchanged, old stores load,
and the status is the same string it always was."""

import json

from greenlm.optimize.row import CandidateRow, Status, load_rows, save_row
from greenlm.optimize.space import Candidate
from greenlm.store import Store


def test_a_stored_row_reads_back_as_it_was_written():
    stored = {
        "recipe": [], "engine": "llamacpp", "quant_type": "q8_0", "threads": 1, "speculative": None, "key": "k",
        "label": "base / llamacpp:q8_0@1t", "host": "h", "model": "m", "execution": "real", "model_path": "f.gguf",
        "size_mb": 1.5, "threads_used": 1, "device": "cpu", "device_used": "cpu", "eval_text": "t", "screen_kld": 0.01,
        "status": "rejected-screen", "reason": "screen KLD too high", "wall_s": 2.0, "search_id": "s",
        "model_fingerprint": "f", "budget": {"max_ppl_increase_pct": 3.0, "max_kld": 0.05}, "run_id": "r",
        "from_a_newer_greenlm": 1,
    }  # fmt: skip
    row = CandidateRow.from_dict(stored)
    assert row.status == "rejected-screen" and row.screen.screen_kld == 0.01 and row.quality is None
    assert row.to_dict() == stored and list(row.to_dict()) == list(stored)


def test_status_is_its_string_in_json_and_text():
    assert json.dumps({"status": Status.MEASURED}) == '{"status": "measured"}'
    assert f"{Status.SKIPPED_DOMINATED}" == "skipped-dominated" and Status("failed") is Status.FAILED


def test_a_row_goes_through_the_store_whole(tmp_path):
    row = CandidateRow("k", "base / transformers", Candidate(), model="tiny", search_id="s", wall_s=1.0)
    row.status, row.reason = Status.FAILED, "no such file"
    with Store(tmp_path / "s.db") as store:
        run_id = save_row(store, row, parent="tiny")
        [back] = load_rows(store, "s")
        stored = store.runs(kind="candidate")[0]
    assert back.run_id == run_id and back.reason == "no such file" and back.status is Status.FAILED
    assert back.candidate == Candidate() and back.loaded is None and back.energy is None
    assert stored["variant_id"] == "k" and stored["parent"] == "tiny" and stored["recipe_json"] == "[]"
    assert {k: v for k, v in back.to_dict().items() if k != "run_id"} == row.to_dict()
