"""`greenlm schema`: the JSON Schemas editors check policy, search-space and recipe files with, and that they
agree with greenlm's own loaders on the repo's recipes and the README's examples (good and bad)."""

import json
from pathlib import Path

import pytest
import yaml

from greenlm.compress.recipe import load_recipe
from greenlm.errors import GreenlmError
from greenlm.gateway.policy import load_gateway_policy
from greenlm.optimize.space import load_space
from greenlm.schemas import file_schema
from greenlm.serve.policy_file import load_policy
from tests.test_cli import run_cli

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))

POLICY = """\
ladder:
  - {name: q8, model: variants/q8.gguf, threads: 2, kld: 0.005, decode_j_per_token: 0.2, decode_tokens_per_s: 70}
  - {name: q4, model: variants/q4.gguf, engine: llamacpp, kld: 0.06, decode_j_per_token: 0.1}
  - {name: packaged, model: builtin, kld: 0.003, decode_j_per_token: 0.15}
start: q8
interval_s: 1.0
quality: {max_kld: 0.05, window_tokens: 50000, margin: 0.1, min_credit_tokens: 2000}
grid: {csv: grid.csv, speed: 60, loop: true}
carbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}
load: {ttft_slo_s: 2.0, queue_slo_s: 1.0, sustain_s: 5, calm_s: 20, calm_fraction: 0.5, recent_s: 10, max_cores: 4}
idle: {unload_after_s: 300, low_load_after_s: 10, low_load_cores: 1}
"""
GATEWAY_POLICY = """\
ladder:
  - {name: small, url: "http://127.0.0.1:8081", kld: 0.021, decode_j_per_token: 0.05}
  - {name: big, url: "http://gpu-box:8000/v1", kld: 0.001, decode_j_per_token: 0.21, key_env: BIG_KEY}
start: big
quality: {max_kld: 0.05}
grid: {csv: grid.csv, speed: 60}
carbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}
"""
SPACE = """\
grids:
  - {engine: llamacpp, quant_types: [q8_0, q4_k_m], threads: [1, null]}
  - {engine: llamacpp, recipes: [[{method: gptq}], [{method: awq, fold: true}]], quant_types: [codes]}
  - {engine: llamacpp, quant_types: [mixed], mixed_max_kld: 0.02, codes_from: [[{method: gptq}]]}
  - {engine: llamacpp, recipes: [[{method: drop_layers, count: 2}, {method: distill, minutes: 10}]], quant_types: [q8_0]}
"""
# (kind, a good file, a change that both the schema and the loader refuse)
BAD = [
    ("policy", POLICY, {"load": {"ttft_slo": 1}}),
    ("policy", POLICY, {"quality": {"max_kld": -1}}),
    ("policy", POLICY, {"interval_s": "fast"}),
    ("policy", POLICY, {"ladder": [{"name": "a b", "model": "m.gguf"}], "start": None}),
    ("policy", POLICY, {"ladder": [{"name": "a", "model": "m.gguf", "engine": "vllm"}], "start": None}),
    ("policy", POLICY, {"ladder": [{"name": "a"}], "start": None}),
    ("policy", POLICY, {"grid": {"csv": "grid.csv", "speed": 0}}),
    ("policy", POLICY, {"grid": {"csv": "grid.csv", "loop": "yes"}}),
    ("policy", POLICY, {"grid": None}),  # carbon needs a grid
    ("policy", POLICY, {"lod": {}}),
    ("gateway-policy", GATEWAY_POLICY, {"idle": {"unload_after_s": 60}}),
    ("gateway-policy", GATEWAY_POLICY, {"ladder_from_search": "latest"}),
    ("gateway-policy", GATEWAY_POLICY, {"ladder": [{"name": "a"}], "start": None}),
    (
        "gateway-policy",
        GATEWAY_POLICY,
        {"ladder": [{"name": "a", "url": "http://x", "modle": "m"}], "start": None},
    ),
    (
        "gateway-policy",
        GATEWAY_POLICY,
        {"ladder": [{"name": "a", "url": "http://x", "pid": 0}], "start": None},
    ),
    ("space", SPACE, {"grids": []}),
    ("space", SPACE, {"grids": [{"engine": "vllm"}]}),
    ("space", SPACE, {"grids": [{"threads": [0]}]}),
    ("space", SPACE, {"grids": [{"recipes": [[{"method": "drop_layers", "cout": 2}]]}]}),
    ("space", SPACE, {"grids": [{"recipes": [[{"method": "wandaa"}]]}]}),
    ("recipe", "steps: [{method: gptq, bits: 4}]", {"steps": []}),
    ("recipe", "steps: [{method: gptq, bits: 4}]", {"steps": [{"method": "nm", "score": "random"}]}),
    ("recipe", "steps: [{method: gptq, bits: 4}]", {"steps": [{"method": "drop_layers", "count": "four"}]}),
    ("recipe", "steps: [{method: gptq, bits: 4}]", {"step": []}),
]
LOADERS = {
    "policy": load_policy,
    "gateway-policy": load_gateway_policy,
    "space": load_space,
    "recipe": load_recipe,
}


def _validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema")
    schema = file_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _write(tmp_path: Path, data) -> Path:
    (tmp_path / "grid.csv").write_text("timestamp,g_per_kwh\n2025-06-01T00:00Z,450\n")
    path = tmp_path / "file.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_the_repo_recipes_pass_the_recipe_schema(path):
    errors = [e.message for e in _validator("recipe").iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == [] and load_recipe(path).steps


@pytest.mark.parametrize(
    ("kind", "text"), [("policy", POLICY), ("gateway-policy", GATEWAY_POLICY), ("space", SPACE)]
)
def test_the_readme_examples_pass_their_schema_and_their_loader(tmp_path, kind, text):
    data = yaml.safe_load(text)
    assert [e.message for e in _validator(kind).iter_errors(data)] == []
    assert LOADERS[kind](str(_write(tmp_path, text)))


@pytest.mark.parametrize(("kind", "good", "change"), BAD, ids=[f"{b[0]}-{list(b[2])[0]}" for b in BAD])
def test_the_schema_and_the_loader_refuse_the_same_mistakes(tmp_path, kind, good, change):
    data = {k: v for k, v in {**yaml.safe_load(good), **change}.items() if v is not None}
    assert list(_validator(kind).iter_errors(data)), f"the {kind} schema takes {change}"
    with pytest.raises(GreenlmError) as info:
        LOADERS[kind](str(_write(tmp_path, data)))
    assert "\n" not in str(info.value)


def test_load_false_and_defaults_are_in_the_policy_schema():
    schema = file_schema("policy")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "greenlm policy file" and schema["description"]
    assert {"const": False} in schema["properties"]["load"]["anyOf"]
    assert schema["dependentRequired"] == {"carbon": ["grid"]}
    variant = schema["$defs"]["VariantEntry"]
    assert variant["required"] == ["name", "model"]
    assert variant["properties"]["engine"]["enum"] == ["llamacpp", "transformers"]
    assert schema["$defs"]["CarbonPolicy"]["required"] == ["high_g_per_kwh"]  # low defaults to high
    quality = schema["$defs"]["QualityPolicy"]["properties"]["max_kld"]["anyOf"][0]
    assert (quality["minimum"], quality["maximum"]) == (0, 10)
    assert "source" not in schema["properties"]  # where a policy came from is not a setting


def test_the_recipe_schema_knows_every_method_and_its_settings():
    from greenlm.compress.methods import method_names

    schema = file_schema("recipe")
    steps = schema["properties"]["steps"]
    assert steps["minItems"] == 1
    assert sorted(steps["items"]["discriminator"]["mapping"]) == method_names()
    gptq = schema["$defs"]["GPTQ"]
    assert gptq["properties"]["method"]["const"] == "gptq" and gptq["additionalProperties"] is False
    assert gptq["properties"]["group_size"]["description"]  # from the config dataclass's comments
    space = file_schema("space")
    assert space["required"] == ["grids"]
    step = space["$defs"]["Grid"]["properties"]["recipes"]["items"]["items"]  # a grid recipe's step
    assert step["discriminator"]["propertyName"] == "method" and "GPTQ" in space["$defs"]


def test_schema_command_prints_writes_and_refuses(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "schema", "policy")
    assert code == 0 and err == ""
    assert json.loads(out) == file_schema("policy")
    code, as_json, _ = run_cli(monkeypatch, capsys, "schema", "policy", "--json")
    assert code == 0 and as_json == out  # it is JSON already
    target = tmp_path / "schemas" / "space.schema.json"
    code, said, _ = run_cli(monkeypatch, capsys, "schema", "space", "--out", str(target))
    assert code == 0 and json.loads(target.read_text()) == file_schema("space")
    assert f"$schema={target}" in said
    code, printed, _ = run_cli(monkeypatch, capsys, "schema", "space", "--out", str(target), "--json")
    assert code == 0 and printed == target.read_text()
    code, out, err = run_cli(monkeypatch, capsys, "schema", "nope")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no schema named 'nope': choose policy, gateway-policy, space or recipe" in err
    code, out, err = run_cli(monkeypatch, capsys, "schema", "recipe", "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err and err.count("\n") == 1
