"""Recipes: YAML and dataclasses describe the same steps; every mistake is one line that says what to write."""

from pathlib import Path

import pytest

from greenlm.compress.layers import DropLayers
from greenlm.compress.prune import NMSparsity, Wanda
from greenlm.compress.recipe import Recipe, as_recipe, load_recipe, parse_recipe, parse_step
from greenlm.compress.structured import PruneChannels
from greenlm.errors import GreenlmError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dataclasses_are_the_same_recipe(tmp_path):
    path = _write(
        tmp_path,
        "name: small\nsteps:\n  - method: drop_layers\n    count: 2\n"
        "  - {method: wanda, ratio: 0.5, skip: [lm_head, model.layers.0.*]}\n",
    )
    recipe = load_recipe(path)
    expected = Recipe(
        steps=[DropLayers(count=2), Wanda(ratio=0.5, skip=("lm_head", "model.layers.0.*"))], name="small"
    )
    assert recipe == expected
    assert parse_recipe(recipe.to_dict()) == recipe  # round trip through the stored form
    assert load_recipe(_write(tmp_path, recipe.to_yaml())) == recipe


def test_whole_numbers_are_accepted_for_ratios_and_lists_for_tuples():
    step = parse_step({"method": "prune_channels", "ratio": 1 / 2, "multiple_of": 64})
    assert step == PruneChannels(ratio=0.5, multiple_of=64)
    assert parse_step({"method": "drop_layers", "layers": [3, 1]}).layers == (3, 1)


def test_as_recipe_takes_what_callers_hold(tmp_path):
    one = NMSparsity()
    assert as_recipe(one).steps == [one]
    assert as_recipe([{"method": "drop_layers", "count": 1}]).steps == [DropLayers(count=1)]
    assert as_recipe(({"method": "drop_layers", "count": 1},)).steps == [DropLayers(count=1)]
    path = _write(tmp_path, "steps: [{method: nm}]")
    assert as_recipe(str(path)).steps == [one]


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: [{method: wandaa, ratio: 0.5}]", "unknown method 'wandaa' (did you mean 'wanda'?)"),
        ("steps: [{method: drop_layer, count: 2}]", "did you mean 'drop_layers'?"),
        ("steps: [{method: drop_layers, cout: 2}]", "unknown setting 'cout' (did you mean 'count'?)"),
        ("steps: [{method: drop_layers, count: four}]", "'count' must be a whole number or null, got 'four'"),
        ("steps: [{method: drop_layers, count: true}]", "'count' must be a whole number"),
        ("steps: [{method: wanda, ratio: [0.5]}]", "'ratio' must be a number"),
        ("steps: [{method: wanda, ratio: 2}]", "step 1: wanda ratio must be between 0 and 1"),
        ("steps: [{method: nm, score: random}]", "'score' must be 'wanda' or 'magnitude'"),
        ("steps: [{ratio: 0.5}]", "has no 'method'"),
        ("steps: [wanda]", "must be a mapping"),
        ("steps: []", "non-empty 'steps:' list"),
        ("step: [{method: wanda}]", "unknown key 'step' (did you mean 'steps'?)"),
        ("- just a string", "must be a mapping"),
        ("steps: [{method: wanda}\n  oops: [", "not valid YAML"),
    ],
)
def test_recipe_mistakes_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(GreenlmError) as info:
        load_recipe(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_errors_name_the_step(tmp_path):
    path = _write(tmp_path, "steps:\n  - {method: drop_layers, count: 1}\n  - {method: wanda, ratoi: 0.5}\n")
    with pytest.raises(GreenlmError, match=r"recipe recipe.yaml, step 2 \(wanda\): unknown setting 'ratoi'"):
        load_recipe(path)


def test_missing_file_and_empty_recipe():
    with pytest.raises(GreenlmError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")
    with pytest.raises(GreenlmError, match="at least one step"):
        Recipe(steps=[])
    # built in code, a step is a config dataclass or the mapping a file holds; anything else is refused
    assert Recipe(steps=[{"method": "nm"}]) == Recipe(steps=[NMSparsity()])
    with pytest.raises(GreenlmError, match=r"recipe, step 1 must be a mapping like \{method: drop_layers"):
        Recipe(steps=["nm"])


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_are_valid(path):
    assert load_recipe(path).steps
