"""Policy files as a new user writes them, wrong: one line naming the key and what to write, exit 2, before
the port is bound (the port given is busy: a policy error must come first)."""

import socket

import pytest

from greenlm.serve.policy_file import load_policy
from tests.helpers import run_cli

GRID = "grid: {csv: grid.csv, speed: 60}\n"


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def folder(tmp_path, tiny_model_dir):
    (tmp_path / "grid.csv").write_text("timestamp,g_per_kwh\n2025-06-01T00:00Z,450\n2025-06-01T01:00Z,420\n")
    (tmp_path / "bad.csv").write_text("2025-06-01T00:00Z,450\n2025-06-01T01:00Z,lots\n")
    (tmp_path / "unsorted.csv").write_text("2025-06-01T01:00Z,450\n2025-06-01T00:00Z,420\n")
    return tmp_path


LADDER = "ladder:\n  - {name: a, model: MODEL, kld: 0.01}\n  - {name: b, model: MODEL, kld: 0.2}\n"
BAD = [
    ("unknown key", "lod: {ttft_slo_s: 1}\n", "lod is not a setting here: write 'load'"),
    (
        "unknown nested key",
        "load: {ttft_slo: 1}\n",
        "load.ttft_slo is not a setting here: write 'ttft_slo_s'",
    ),
    ("wrong type", "load: {ttft_slo_s: fast}\n", "load.ttft_slo_s must be a number above 0"),
    (
        "threshold out of range",
        GRID + "carbon: {high_g_per_kwh: -5}\n",
        "carbon.high_g_per_kwh must be a number from 0",
    ),
    (
        "thresholds crossed",
        GRID + "carbon: {high_g_per_kwh: 200, low_g_per_kwh: 300}\n",
        "is above high_g_per_kwh",
    ),
    (
        "carbon without a grid",
        "carbon: {high_g_per_kwh: 400}\n",
        "carbon needs a grid intensity that changes",
    ),
    ("missing CSV", "grid: {csv: nope.csv}\n", "grid.csv file"),
    ("CSV with a bad row", "grid: {csv: bad.csv}\n", "bad.csv line 2: intensity 'lots'"),
    ("CSV out of order", "grid: {csv: unsorted.csv}\n", "line 2: timestamp 2025-06-01T00:00Z is not after"),
    (
        "unknown variant name",
        LADDER + "start: q9\n",
        "start names 'q9', which is not in the ladder: write one of a, b",
    ),
    ("empty ladder", "ladder: []\n", "ladder is empty"),
    ("variant without a model", "ladder:\n  - {name: a}\n", "ladder[0] (a) has no model"),
    ("variant model missing", "ladder:\n  - {name: a, model: /no/such.gguf}\n", "ladder variant 'a'"),
    ("bad engine", "ladder:\n  - {name: a, model: x.gguf, engine: vllm}\n", "ladder[0].engine 'vllm'"),
    ("search that does not exist", "ladder_from_search: deadbeef\n", "holds no optimize search"),
    ("provider without a token", "grid: {provider: electricitymaps, zone: FR}\n", "$ELECTRICITYMAPS_TOKEN"),
    (
        "two grid sources",
        "grid: {csv: grid.csv, provider: electricitymaps}\n",
        "grid needs exactly one source",
    ),
    ("not YAML", "load: {ttft_slo_s: 1\n", "is not valid YAML"),
    ("not a mapping", "- load\n", "must be a YAML mapping"),
    (
        "idle of the wrong type",
        "idle: {unload_after_s: soon}\n",
        "idle.unload_after_s must be a number above 0",
    ),
    ("speed zero", "grid: {csv: grid.csv, speed: 0}\n", "grid.speed must be a number above 0"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_files(monkeypatch, capsys, folder, tiny_model_dir, busy_port, case, text, expected):
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    monkeypatch.chdir(folder)
    path = folder / "policy.yaml"
    path.write_text(text.replace("MODEL", str(tiny_model_dir)))
    args = ["serve", "--policy", str(path), "--port", str(busy_port), "--db", str(folder / "s.db")]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and out == "", err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert expected in err, err
    assert "in use" not in err  # refused before the port


def test_flags_without_a_ladder_are_refused(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--max-kld", "0.05")
    assert code == 2 and "--ladder-from-search" in err and err.count("\n") == 1
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--ladder-from-search", "latest", "--max-kld", "-1")
    assert code == 2 and "--max-kld must be" in err


def test_a_good_file_parses_with_its_defaults(folder, tiny_model_dir):
    path = folder / "policy.yaml"
    path.write_text(
        LADDER.replace("MODEL", str(tiny_model_dir))
        + GRID
        + "carbon: {high_g_per_kwh: 400}\nidle: {unload_after_s: 30}\n"
    )
    policy = load_policy(path)
    assert [v.name for v in policy.ladder] == ["a", "b"] and policy.ladder[1].kld == 0.2
    assert policy.grid.csv == str(folder / "grid.csv") and policy.grid.speed == 60  # relative to the file
    assert policy.carbon.low_g_per_kwh == 400 and policy.idle.unload_after_s == 30
    assert policy.load is not None and policy.quality.max_kld is None


def test_sections_built_in_code_check_as_a_file_does():
    from greenlm.errors import GreenlmError
    from greenlm.serve.policy_file import PolicyConfig, QualityPolicy, parse_policy

    with pytest.raises(GreenlmError, match=r"^policy: max_kld must be a number from 0 to 10, got -1: write"):
        QualityPolicy(max_kld=-1)
    # a whole number written with a point is still whole; text is trimmed
    policy = parse_policy({"quality": {"window_tokens": 5.0e4}, "ladder_from_search": " latest "}, "p.yaml")
    assert policy.quality.window_tokens == 50000 and isinstance(policy.quality.window_tokens, int)
    assert policy.ladder_from_search == "latest" and policy.source == "p.yaml"
    assert list(policy.to_dict())[0] == "source" and policy.to_dict()["ladder"] == []
    # in code, load=None is load stepping off; in a file, `load:` left empty keeps its defaults
    assert PolicyConfig(load=None).load is None and parse_policy({"load": None}).load is not None
    assert parse_policy({"load": False}).load is None
    copied = policy.model_copy(update={"quality": policy.quality.model_copy(update={"max_kld": 0.1})})
    assert copied.quality.max_kld == 0.1 and copied.quality.window_tokens == 50000
