"""Recipes: an ordered list of compression steps, as YAML or as Python dataclasses.

```yaml
steps:
  - method: drop_layers
    count: 4
  - method: gptq
    bits: 4
    group_size: 32
```
is `Recipe(steps=[DropLayers(count=4), GPTQ(bits=4, group_size=32)])`. `Recipe` is a pydantic model (the file's
declared format, `greenlm schema recipe`): each step is checked against a model made from its method's config
dataclass (the settings, their types, `method` choosing which), then built as that dataclass, whose
`__post_init__` checks the values. Every mistake (unknown method or setting, wrong type, bad value) is one
`GreenlmError` line naming the step and what to write instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    create_model,
)

from greenlm.compress.base import StepConfig
from greenlm.compress.methods import config_class, method_names
from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.fileformat import FileModel, first_error, json_schema, type_words

RECIPE_KEYS = ("name", "steps")
EXAMPLE = "steps: [{method: rtn, bits: 8}]"


def _field_notes(cls: type) -> dict[str, str]:
    """A config dataclass's field comments (trailing, or the lines just above), as schema descriptions."""
    notes: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            comment = re.match(r" {4}#\s?(.*)$", line)
            if comment:
                above.append(comment.group(1))
                continue
            field = re.match(r" {4}(\w+):[^#]*?(?:#\s?(.*))?$", line)  # a class-level field
            if field and (field.group(2) or above):
                notes[field.group(1)] = field.group(2) or " ".join(above)
            above = []
    return notes


def _listed(value):
    return tuple(value) if isinstance(value, list) else value


def _setting(hint):
    """The pydantic annotation of one setting: strict as the dataclass reads it, a YAML list for a tuple."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in args):
        return Annotated[hint, BeforeValidator(_listed)]
    return hint


def _step_model(method: str):
    cls = config_class(method)
    hints, notes = typing.get_type_hints(cls), _field_notes(cls)
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            info = Field(f.default, description=notes.get(f.name))
        elif f.default_factory is not dataclasses.MISSING:
            info = Field(default_factory=f.default_factory, description=notes.get(f.name))
        else:
            info = Field(description=notes.get(f.name))
        settings[f.name] = (_setting(hints[f.name]), info)
    return create_model(
        cls.__name__,
        __config__=ConfigDict(strict=True, extra="forbid", frozen=True, title=method),
        __doc__=inspect.cleandoc(cls.__doc__ or method),
        method=(Literal[method], Field(description="The compression method.")),
        **settings,
    )


def _as_config(model) -> StepConfig:
    """The step's config dataclass, whose own checks (ranges, combinations) run here."""
    settings = {k: getattr(model, k) for k in model.model_fields_set if k != "method"}
    try:
        return config_class(model.method)(**settings)
    except GreenlmError as exc:
        raise ValueError(str(exc)) from None


def _keep_configs(value, handler):
    return value if isinstance(value, StepConfig) else handler(value)


STEP_MODELS = tuple(_step_model(m) for m in method_names())
# One step: a mapping whose `method` picks its settings' model, built as the method's config dataclass (a
# dataclass given in code is kept as it is); stored and shown as its to_dict().
Step = Annotated[
    Union[STEP_MODELS],  # noqa: UP007  (a runtime tuple of models)
    Field(discriminator="method"),
    AfterValidator(_as_config),
    WrapValidator(_keep_configs),
    PlainSerializer(lambda step: step.to_dict()),
]
_STEP = TypeAdapter(Step)


class Recipe(FileModel):
    """Compression steps applied in order to a parent model (greenlm compress --recipe); stored with every
    variant, so any variant can be rebuilt."""

    example = {"steps": [{"method": "rtn", "bits": 8}]}
    what = "recipe"
    steps: list[Step] = Field(min_length=1, description="The steps, applied in this order.")
    name: str | None = Field(None, description="A label for the recipe (default: its steps).")

    @classmethod
    def error_line(cls, exc: ValidationError, data: Any, where: str) -> str:
        err = first_error(exc)
        loc, value = tuple(err["loc"]), err.get("input")
        if loc and loc[0] == "steps" and len(loc) > 1:
            raw = (data or {}).get("steps", [])[loc[1]] if isinstance(data, dict) else None
            return step_error_line(err, loc[2:], raw, f"{where}, step {loc[1] + 1}")
        if err["type"] == "extra_forbidden":
            return (
                f"{where}: unknown key '{loc[0]}'{_did_you_mean(str(loc[0]), RECIPE_KEYS)}: "
                f"a recipe has {', '.join(RECIPE_KEYS)}"
            )
        if loc == ("name",):
            return f"{where}: 'name' must be text, got {value!r}"
        return f"{where} needs a non-empty 'steps:' list: at least one step, e.g. {EXAMPLE}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"steps": [json.loads(json.dumps(s.to_dict())) for s in self.steps]}
        if self.name:
            data["name"] = self.name
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def label(self) -> str:
        return self.name or "+".join(step_label(s) for s in self.steps)


def step_error_line(err: dict, loc: tuple, raw: Any, where: str) -> str:
    """The line for a pydantic error inside one step (`loc` relative to the step, `raw` as written)."""
    etype = err["type"]
    methods = ", ".join(method_names())
    if etype == "union_tag_not_found":
        return f"{where} has no 'method': choose one of {methods}"
    if etype == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return f"{where}: unknown method '{tag}'{_did_you_mean(tag, method_names())}: choose one of {methods}"
    if etype == "value_error" and not loc:  # the config dataclass's own check
        return f"{where}: {err['ctx']['error']}"
    if not loc or not isinstance(raw, dict):
        return f"{where} must be a mapping like {{method: drop_layers, count: 2}}, got {raw!r}"
    method, key = loc[0], str(loc[1]) if len(loc) > 1 else "method"
    cls = config_class(method)
    known = [f.name for f in dataclasses.fields(cls)]
    if etype == "extra_forbidden":
        return (
            f"{where} ({method}): unknown setting '{key}'{_did_you_mean(key, known)}: "
            f"valid settings are {', '.join(known)}"
        )
    hint = typing.get_type_hints(cls).get(key, Any)
    return f"{where} ({method}): '{key}' must be {type_words(hint)}, got {raw.get(key)!r}"


def step_label(step: StepConfig) -> str:
    settings = ",".join(f"{k}={_short(v)}" for k, v in step.to_dict().items() if k != "method")
    return f"{step.method}({settings})" if settings else step.method


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_step(data: Any, where: str = "step") -> StepConfig:
    """One step from a mapping such as `{method: gptq, bits: 4}`."""
    try:
        return _STEP.validate_python(data)
    except ValidationError as exc:
        err = first_error(exc)
        raise GreenlmError(step_error_line(err, tuple(err["loc"]), data, where)) from None


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """A recipe from parsed YAML/JSON: `{steps: [...], name: optional}`."""
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise GreenlmError(f"{source} must be a mapping with a 'steps:' list")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise GreenlmError(Recipe.error_line(exc, data, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    p, data = read_yaml_file(
        path, "recipe file", "pass a YAML file with a 'steps:' list", "a YAML file with a 'steps:' list"
    )
    return parse_recipe(data, source=f"recipe {p.name}")


def recipe_schema() -> dict:
    """The recipe file's JSON Schema, for editors (`greenlm schema recipe`)."""
    return json_schema(Recipe, "greenlm recipe", Recipe.__doc__)


def as_recipe(value: Recipe | StepConfig | list | dict | str | Path) -> Recipe:
    """Whatever a caller holds (a Recipe, one step, a list of step dicts, a YAML path) as a Recipe."""
    if isinstance(value, Recipe):
        return value
    if isinstance(value, StepConfig):
        return Recipe(steps=[value])
    if isinstance(value, (str, Path)):
        return load_recipe(value)
    if isinstance(value, (list, tuple)) and all(isinstance(s, StepConfig) for s in value) and value:
        return Recipe(steps=list(value))
    return parse_recipe(list(value) if isinstance(value, tuple) else value)


def parse_option(text: str):
    """`KEY=VALUE` with VALUE read as YAML (numbers, true/false, [lists])."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise GreenlmError(f"--option '{text}' must look like KEY=VALUE, e.g. --option damp=0.01")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def step_from_flags(method: str, flags: dict, options: list[str]) -> dict:
    """The step mapping for `--method` and its flags: each generic flag must be a setting of that method."""
    if method not in method_names():
        parse_step({"method": method}, f"--method {method}")  # raises with a did-you-mean
    known = {f.name for f in dataclasses.fields(config_class(method))}
    step: dict = {"method": method}
    for flag, (setting, value) in flags.items():
        if value is None:
            continue
        targets = setting if isinstance(setting, tuple) else (setting,)
        missing = [t for t in targets if t not in known]
        if missing:
            raise GreenlmError(
                f"{flag} does not apply to method '{method}': its settings are {', '.join(sorted(known)) or 'none'}"
            )
        if isinstance(setting, tuple):
            step.update(zip(setting, value, strict=True))
        else:
            step[setting] = value
    for text in options:
        key, value = parse_option(text)
        step[key] = value
    return step


def parse_pattern(text: str | None) -> tuple[int, int] | None:
    """`N:M` (e.g. 2:4) as a pair; None stays None."""
    if text is None:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise GreenlmError(f"--pattern must look like N:M (e.g. 2:4), got '{text}'")
    return int(n), int(m)


def recipe_from_flags(
    recipe: str | None, method: str | None, flags: dict[str, tuple], options: list[str]
) -> Recipe:
    """The recipe `greenlm compress` was asked for: a YAML file, or one `method` whose settings come from
    `flags` ({flag: (setting name or names, value or None)}) and `options` (KEY=VALUE). Mixing the two, or
    neither, is refused with the fix."""
    if recipe and method:
        raise GreenlmError(
            "--recipe and --method both given: use a recipe file, or one --method with its flags"
        )
    if recipe:
        given = [f for f, (_s, v) in flags.items() if v is not None] + (["--option"] if options else [])
        if given:
            raise GreenlmError(
                f"{given[0]} sets a --method step: with --recipe, put settings in the recipe file"
            )
        return load_recipe(recipe)
    if method:
        return Recipe(steps=[parse_step(step_from_flags(method, flags, options), f"--method {method}")])
    raise GreenlmError("nothing to do: pass --recipe FILE or --method NAME (see `greenlm compress --help`)")
