import json

import pytest

from greenlm.data import load_text, split_text
from greenlm.errors import GreenlmError


def test_builtin_split_is_disjoint_deterministic_and_balanced():
    source = load_text(None)
    a, b = split_text(source), split_text(load_text("builtin"))
    assert a.calibration == b.calibration and a.evaluation == b.evaluation
    assert not set(a.calibration) & set(a.evaluation)
    total = len(a.calibration) + len(a.evaluation)
    assert 0.3 < len(a.evaluation) / total < 0.5  # eval fraction 0.4 by paragraph count
    assert a.describe("evaluation") == "builtin:pydoc-topics/evaluation"


def test_adding_text_does_not_move_existing_paragraphs(tmp_path):
    paras = [f"paragraph number {i} about energy" for i in range(60)]
    f1, f2 = tmp_path / "a.txt", tmp_path / "b.txt"
    f1.write_text("\n\n".join(paras))
    f2.write_text("\n\n".join(paras + ["a brand new paragraph"]))
    s1, s2 = split_text(load_text(str(f1))), split_text(load_text(str(f2)))
    assert set(s1.evaluation) <= set(s2.evaluation)
    assert set(s1.calibration) <= set(s2.calibration)


def test_duplicate_paragraphs_land_on_one_side(tmp_path):
    f = tmp_path / "dup.txt"
    f.write_text("\n\n".join(["same text"] * 5 + [f"other {i}" for i in range(40)]))
    s = split_text(load_text(str(f)))
    assert ("same text" in s.evaluation) != ("same text" in s.calibration)


def test_jsonl_fields(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(
        "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(3)) + "\n" + json.dumps("plain") + "\n"
    )
    assert load_text(str(f)).documents == ("doc 0", "doc 1", "doc 2", "plain")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "   \n\n", "is empty"),
        ("bad.jsonl", "{not json", "not valid JSON"),
        ("nofield.jsonl", '{"title": "x"}', "no string field"),
        ("data.csv", "a,b", "unsupported text file"),
        ("one.txt", "only one paragraph", "too short to split"),
    ],
)
def test_bad_text_gives_clear_error(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(GreenlmError, match=message):
        split_text(load_text(str(f)))


def test_missing_text_file():
    with pytest.raises(GreenlmError, match="not found"):
        load_text("/no/such/file.txt")
