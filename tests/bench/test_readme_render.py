"""bench/readme.py renders every result's notes under its table, and a placeholder where no JSON is yet."""

import json

import pytest
import readme

MACHINE = {"date": "2026-01-01", "cpu": "a CPU", "cpus_allowed": 2, "commit": "abcdef1234567", "dirty": True}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "RESULTS", tmp_path)

    def write(name: str, record: dict):
        (tmp_path / f"{name}.json").write_text(json.dumps({"machine": MACHINE, **record}))

    return write


def test_notes_go_under_the_table_for_any_benchmark(results):
    results("some_bench", {"markdown": "| a |\n|---|\n| 1 |", "notes": ["first caveat", "second caveat"]})
    text = readme.render("some_bench")
    table, rest = text.split("\nNotes:\n")
    assert table.strip() == "| a |\n|---|\n| 1 |"
    assert rest.startswith("- first caveat\n- second caveat\n\nMeasured 2026-01-01")
    assert "(uncommitted changes)" in rest


def test_a_single_note_and_no_notes(results):
    results("one", {"markdown": "| a |", "notes": "only caveat"})
    assert "Notes:\n- only caveat\n" in readme.render("one")
    results("none", {"markdown": "| a |"})
    assert readme.render("none") == f"| a |\n\n{readme.provenance({'machine': MACHINE}, 'none')}\n"


def test_renderers_with_their_own_tables_get_notes_too(results):
    trace = json.loads((readme.ROOT / "bench" / "results" / "adapt_trace.json").read_text())
    results("adapt_trace", trace)
    text = readme.render("adapt_trace")
    assert trace["notes"] and all(f"- {note}\n" in text for note in trace["notes"])


def test_a_section_with_no_json_says_what_that_means(results):
    assert readme.render("gpu_check").startswith("Not yet run on a GPU")
    assert readme.render("other").startswith("(no result yet: run the benchmark")
