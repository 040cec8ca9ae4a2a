"""The search space: greenlm's own GGUF files (codes, mixed) and healed cuts as candidates, and their checks."""

import pytest

from greenlm.errors import GreenlmError
from greenlm.optimize.space import (
    CODES,
    HEAL_MIN_BUDGET_S,
    MIXED,
    Candidate,
    default_space,
    expand,
    load_space,
)

GPTQ = ({"method": "gptq"},)


def test_default_space_offers_gptq_codes_and_a_mixed_file_in_the_fast_engine():
    candidates = default_space().candidates
    codes = [c for c in candidates if c.quant_type == CODES]
    mixed = [c for c in candidates if c.quant_type == MIXED]
    assert [c.recipe for c in codes] == [GPTQ] and codes[0].engine == "llamacpp"
    assert len(mixed) == 1 and mixed[0].codes_from == (GPTQ,) and mixed[0].mixed_max_kld == 0.01
    assert mixed[0].label == "base / llamacpp:mixed(kld<=0.01+gptq)@1t"
    # ahead of the all-threads types, so a 20-minute budget reaches them
    first_all_threads = next(i for i, c in enumerate(candidates) if c.engine == "llamacpp" and not c.threads)
    assert candidates.index(mixed[0]) < first_all_threads


def test_healed_cuts_join_the_default_space_only_when_the_time_budget_holds_them():
    def healed(budget_s):
        return [
            c for c in default_space(budget_s).candidates if any(s["method"] == "distill" for s in c.recipe)
        ]

    assert healed(None) == [] and healed(20 * 60) == [] and healed(HEAL_MIN_BUDGET_S - 1) == []
    (one,) = healed(HEAL_MIN_BUDGET_S)
    assert one.recipe == ({"method": "drop_layers", "count": 2}, {"method": "distill", "minutes": 10})
    (capped,) = healed(10 * 3600)
    assert capped.recipe[1]["minutes"] == 15
    assert load_space(None, 2 * 3600).candidates[-1].recipe[1]["method"] == "distill"


def test_new_fields_do_not_change_the_keys_of_earlier_candidates():
    plain = Candidate(engine="llamacpp", quant_type="q8_0", threads=1)
    assert set(plain.to_dict()) == {"recipe", "engine", "quant_type", "threads"}
    mixed = Candidate(engine="llamacpp", quant_type=MIXED, mixed_max_kld=0.02, codes_from=(GPTQ,))
    assert mixed.to_dict()["codes_from"] == [[{"method": "gptq"}]]
    assert mixed.key != Candidate(engine="llamacpp", quant_type=MIXED, mixed_max_kld=0.02).key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quant_type=CODES), "add a gptq, rtn or awq step"),
        (dict(quant_type=CODES, recipe=({"method": "drop_layers", "count": 1},)), "add a gptq"),
        (dict(quant_type=MIXED), "mixed_max_kld > 0"),
        (dict(quant_type=MIXED, mixed_max_kld=-1), "mixed_max_kld > 0"),
        (dict(quant_type=MIXED, mixed_max_kld=0.01, recipe=GPTQ), "move the recipe to codes_from"),
        (dict(quant_type="q8_0", mixed_max_kld=0.01), "quant_type mixed only"),
        (dict(quant_type=MIXED, mixed_max_kld=0.01, codes_from=(({"method": "prune"},),)), "no gptq"),
    ],
)
def test_greenlm_file_types_refuse_what_they_cannot_build(kwargs, message):
    with pytest.raises(GreenlmError, match=message):
        Candidate(engine="llamacpp", **kwargs)


def test_a_space_file_grid_can_ask_for_mixed_files(tmp_path):
    grid = {
        "engine": "llamacpp",
        "quant_types": ["q4_0", MIXED],
        "mixed_max_kld": 0.05,
        "codes_from": [[{"method": "gptq"}], [{"method": "awq", "fold": True}]],
    }
    plain, mixed = expand(grid)
    assert plain.quant_type == "q4_0" and plain.codes_from == () and plain.mixed_max_kld is None
    assert mixed.mixed_max_kld == 0.05 and len(mixed.codes_from) == 2
    with pytest.raises(GreenlmError, match="list of recipes"):
        expand({**grid, "codes_from": {"method": "gptq"}})


def test_a_stored_row_gives_back_its_candidate():
    import json

    gptq = ({"method": "gptq", "bits": 4},)
    kinds = [
        Candidate(),
        Candidate(engine="llamacpp", quant_type="q8_0", threads=1),
        Candidate(engine="llamacpp", speculative="prompt-lookup"),
        Candidate(recipe=gptq, engine="llamacpp", quant_type="codes"),
        Candidate(engine="llamacpp", quant_type="mixed", mixed_max_kld=0.01, codes_from=(gptq,), threads=1),
    ]
    for candidate in kinds:
        row = json.loads(json.dumps({**candidate.to_dict(), "key": candidate.key, "kld": 0.01}))  # as stored
        again = Candidate.from_row(row)
        assert again == candidate and again.key == candidate.key


@pytest.mark.parametrize(
    "text, message",
    [
        ("grids: []", "s.yaml: grids must be a non-empty list of grids"),
        ("grids: [{engin: llamacpp}]", "s.yaml: grids[0].engin is not a setting here: write 'engine'"),
        ("grids: [{engine: vllm}]", "grids[0].engine 'vllm' is unknown: write transformers or llamacpp"),
        (
            "grids: [{engine: llamacpp, threads: [1, 0]}]",
            "grids[0].threads[1] must be a whole number of at least 1",
        ),
        # a grid's steps are checked as a recipe file's, before the search starts
        (
            "grids: [{recipes: [[], [{method: drop_layers, cout: 2}]]}]",
            "grids[0].recipes[1][0] (drop_layers): unknown setting 'cout' (did you mean 'count'?)",
        ),
        (
            "grids: [{recipes: [[{method: drop_layers, count: 0}]]}]",
            "grids[0].recipes[0][0]: drop_layers count",
        ),
        ("grids: [{recipes: [{method: gptq}]}]", "grids[0].recipes[0] must be a recipe: a list of steps"),
        (
            "grids: [{quant_types: [q8_0]}]",
            "grids[0] gives a candidate that cannot run: quant_type 'q8_0' needs",
        ),
        ("grids: [{engine: llamacpp, quant_types: []}]", "grids[0].quant_types is empty"),
    ],
)
def test_space_file_mistakes_are_one_line_naming_the_grid(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(GreenlmError) as info:
        load_space(str(path))
    assert message in str(info.value) and str(info.value).startswith(f"search space {path}: ")
    assert "\n" not in str(info.value)


def test_grid_steps_are_kept_as_written_so_keys_do_not_change():
    (candidate,) = expand({"recipes": [[{"method": "wanda", "ratio": 1 / 2}]]})
    assert candidate.recipe == ({"method": "wanda", "ratio": 0.5},)  # not the step's full settings
    assert candidate.key == Candidate(recipe=({"method": "wanda", "ratio": 0.5},)).key
