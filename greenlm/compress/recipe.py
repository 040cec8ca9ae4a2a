"""Recipes: an ordered list of compression steps, as YAML or as Python dataclasses.

```yaml
steps:
  - method: drop_layers
    count: 4
  - method: gptq
    bits: 4
    group_size: 32
```
is `Recipe(steps=[DropLayers(count=4), GPTQ(bits=4, group_size=32)])`. Every mistake (unknown method or
setting, wrong type, bad value) is one `GreenlmError` line naming the step and what to write instead.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from greenlm.compress.base import StepConfig
from greenlm.compress.methods import config_class, method_names
from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError

RECIPE_KEYS = ("name", "steps")


@dataclass
class Recipe:
    steps: list[StepConfig] = field(default_factory=list)
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise GreenlmError("a recipe needs at least one step, e.g. steps: [{method: rtn, bits: 8}]")
        for i, step in enumerate(self.steps, 1):
            if not isinstance(step, StepConfig):
                raise GreenlmError(
                    f"recipe step {i} is {type(step).__name__}, not a step config such as DropLayers(count=2)"
                )

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


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return f"a list of {_type_name(inner)}"
    if hint is type(None):
        return "null"
    return {int: "a whole number", float: "a number", str: "text", bool: "true/false"}.get(hint, str(hint))


def _coerce(value, hint):
    """`value` converted to `hint` (lists to tuples, whole numbers to floats), or raise TypeError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise TypeError
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [_coerce(v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value  # a type this checker does not know: the config's own __post_init__ validates it


def parse_step(data: Any, where: str = "step") -> StepConfig:
    """One step from a mapping such as `{method: gptq, bits: 4}`."""
    if not isinstance(data, dict):
        raise GreenlmError(f"{where} must be a mapping like {{method: drop_layers, count: 2}}, got {data!r}")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise GreenlmError(f"{where} has no 'method': choose one of {', '.join(method_names())}")
    if method not in method_names():
        raise GreenlmError(
            f"{where}: unknown method '{method}'{_did_you_mean(method, method_names())}: "
            f"choose one of {', '.join(method_names())}"
        )
    cls = config_class(method)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    values = {}
    for key, value in data.items():
        if key == "method":
            continue
        if key not in known:
            raise GreenlmError(
                f"{where} ({method}): unknown setting '{key}'{_did_you_mean(str(key), known)}: "
                f"valid settings are {', '.join(known)}"
            )
        try:
            values[key] = _coerce(value, hints.get(key, Any))
        except TypeError:
            raise GreenlmError(
                f"{where} ({method}): '{key}' must be {_type_name(hints[key])}, got {value!r}"
            ) from None
    try:
        return cls(**values)
    except GreenlmError as exc:
        raise GreenlmError(f"{where}: {exc}") from None


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """A recipe from parsed YAML/JSON: `{steps: [...], name: optional}`."""
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise GreenlmError(f"{source} must be a mapping with a 'steps:' list")
    unknown = [k for k in data if k not in RECIPE_KEYS]
    if unknown:
        raise GreenlmError(
            f"{source}: unknown key '{unknown[0]}'{_did_you_mean(str(unknown[0]), RECIPE_KEYS)}: "
            f"a recipe has {', '.join(RECIPE_KEYS)}"
        )
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise GreenlmError(
            f"{source} needs a non-empty 'steps:' list, e.g. steps: [{{method: rtn, bits: 8}}]"
        )
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise GreenlmError(f"{source}: 'name' must be text, got {name!r}")
    parsed = [parse_step(s, f"{source}, step {i}") for i, s in enumerate(steps, 1)]
    return Recipe(steps=parsed, name=name)


def load_recipe(path: str | Path) -> Recipe:
    p, data = read_yaml_file(
        path, "recipe file", "pass a YAML file with a 'steps:' list", "a YAML file with a 'steps:' list"
    )
    return parse_recipe(data, source=f"recipe {p.name}")


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
    known = {f.name for f in fields(config_class(method))}
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
