"""A file of the wrong kind, encoding or shape, on every verb that reads one: one line, exit 2, nothing else.

Each case fails before a model loads (the built-in model is resolved, never run), so this file stays fast.
"""

import re

import pytest

from tests.helpers import run_cli

BINARY = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00"
LATIN1 = "caf\u00e9 na\u00efve prompt\n".encode("latin-1")  # not UTF-8


def _file(tmp_path, name: str, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


CASES = [
    # (verb and flag, file name, content, what the line must say)
    (["measure", "--prompts"], "p.jsonl", BINARY, "prompts file .* is a binary file, not text"),
    (["measure", "--prompts"], "p.txt", LATIN1, "prompts file .* is not UTF-8 text"),
    (
        ["measure", "--prompts"],
        "p.jsonl",
        '{"prompt": "a"}\n[1, 2]\n',
        r"p.jsonl:2 has no non-empty 'prompt'",
    ),
    (["measure", "--prompts"], "p.jsonl", '{"prompt": "a"\n', r"p.jsonl:1 is not valid JSON"),
    (["measure", "--prompts"], "p.jsonl", '{"messages": "hi"}\n', "'messages' must be a non-empty list"),
    (["measure", "--text"], "t.txt", BINARY, "text file .* is a binary file, not text"),
    (["measure", "--text"], "t.txt", LATIN1, "text file .* is not UTF-8 text"),
    (["measure", "--text"], "t.jsonl", "[1, 2]\n", r"t.jsonl:1 has no string field"),
    (["measure", "--text"], "t.bin", "some text", "unsupported text file"),
    (["eval", "--text"], "t.txt", LATIN1, "text file .* is not UTF-8 text"),
    (["eval", "--text"], "t.jsonl", BINARY, "text file .* is a binary file, not text"),
    (["compress", "--recipe"], "r.yaml", BINARY, "recipe file .* is a binary file, not text"),
    (["compress", "--recipe"], "r.yaml", LATIN1, "recipe file .* is not UTF-8 text"),
    (["compress", "--recipe"], "r.yaml", "just words\n", "must be a mapping with a 'steps:' list"),
    (["compress", "--recipe"], "r.yaml", "steps: [\n", "is not valid YAML"),
    (["optimize", "--space"], "s.yaml", BINARY, "search space file"),
    (["optimize", "--space"], "s.yaml", "- a\n- b\n", "needs a top-level 'grids:' list"),
    pytest.param(
        ["optimize", "--space"],
        "s.yaml",
        LATIN1,
        "search space file .* not UTF-8",
    ),
]


@pytest.mark.parametrize(("verb", "name", "content", "message"), CASES)
def test_wrong_file_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, verb, name, content, message):
    path = _file(tmp_path, name, content)
    out_dir = ["--out", str(tmp_path / "variant")] if verb[0] == "compress" else []
    code, out, err = run_cli(monkeypatch, capsys, *verb, path, *out_dir)
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "variant").exists()  # nothing half-written
