"""Declared file formats: the base of greenlm's pydantic file models, and the one line a mistake becomes.

The policy, search-space and recipe files are pydantic models (frozen, unknown keys refused). Ranges, choices
and units are declared on the fields, so one declaration checks a file, words its errors and writes its JSON
Schema (`greenlm schema`). A ValidationError becomes one line: the key path of its first error (an unknown
key goes first: a typo explains the errors after it), what is wrong, and what to write instead.

    policy p.yaml: load.ttft_slo is not a setting here: write 'ttft_slo_s'
    policy p.yaml: quality.max_kld must be a number from 0 to 10, got -1: write e.g. 'max_kld: 0.05'
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator
from pydantic.fields import FieldInfo

from greenlm.errors import GreenlmError

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Mark:
    """Annotated metadata that `FileModel` acts on before pydantic validates the value."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


WHOLE = _Mark("whole")  # a float with nothing after the point (5.0) is read as the integer
STRIP = _Mark("strip")  # text is read without surrounding blanks
# Strict: a bool or quoted text is not a number (YAML's `true`, "5"); an int is a fine float.
Number = Annotated[float, Strict()]
Whole = Annotated[int, Strict(), WHOLE]
Text = Annotated[str, Strict(), STRIP, Field(min_length=1)]


class Says:
    """Annotated metadata: how a field's mistakes read, where the generic wording is not the best.
    `problem` may name `{value}`; `on`: the pydantic error types it is for (None: any)."""

    def __init__(
        self, problem: str | None = None, write: str | None = None, on: tuple[str, ...] | None = None
    ):
        self.problem, self.write, self.on = problem, write, on

    def __repr__(self) -> str:
        return f"Says({self.problem!r}, {self.write!r})"


class Fix(ValueError):
    """A cross-field check's finding, raised inside a validator: `at` extends the key path of the model
    that raised it (e.g. ("start",)); `write` is what to write instead."""

    def __init__(self, problem: str, write: str | None = None, at: tuple = ()):
        super().__init__(problem)
        self.problem, self.write, self.at = problem, write, at


class _Built(type(BaseModel)):
    """Building a model in code (`Candidate(engine="vllm")`) raises the same one-line GreenlmError a file
    gets; validation of a file (model_validate) and of nested sections never passes through here."""

    def __call__(cls, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise GreenlmError(cls.error_line(exc, kwargs, cls.what)) from None


class FileModel(BaseModel, metaclass=_Built):
    """A frozen model of a file or of its section: unknown keys refused, numbers finite."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra=lambda s, cls: cls.adjust_schema(s),
    )
    what: ClassVar[str] = ""  # what its errors start with when it is built in code, e.g. "candidate"
    example: ClassVar[Any] = None  # a typical value: in "write e.g. ..." hints and in the schema's examples

    @classmethod
    def adjust_schema(cls, schema: dict) -> None:
        """Edit the model's generated JSON Schema in place (default: add its example)."""
        if cls.example is not None:
            schema["examples"] = [cls.example]

    @classmethod
    def error_line(cls, exc: ValidationError, data: Any, where: str) -> str:
        """The one line `exc` becomes, for input `data` read from `where` (e.g. "policy p.yaml")."""
        return one_line(exc, cls, f"{where}: " if where else "")

    @field_validator("*", mode="before")
    @classmethod
    def _whole_and_stripped(cls, value, info):
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        marks = _metadata(field.annotation) + list(field.metadata)
        if isinstance(value, float) and value.is_integer() and any(m is WHOLE for m in marks):
            return int(value)
        if isinstance(value, str) and any(m is STRIP for m in marks):
            return value.strip()
        return value


def parse(model: type[FileModel], data: Any, where: str, context: dict | None = None):
    """`model` from a file's parsed YAML, or the one GreenlmError line naming `where` (e.g. "policy p.yaml")."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise GreenlmError(model.error_line(exc, data, where)) from None


def one_line(exc: ValidationError, root: type, prefix: str = "") -> str:
    """The line a ValidationError on `root` becomes: `prefix` (e.g. "policy p.yaml: "), the key path, the
    problem, and what to write."""
    key, problem, write = explain(first_error(exc), root)
    line = f"{prefix}{key} {problem}" if key else f"{prefix}{problem}"
    return f"{line}: write {write}" if write else line


def first_error(exc: ValidationError) -> dict:
    """The error the line reports: an unknown key before anything else, else pydantic's first."""
    errors = exc.errors(include_url=False)
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


# --- where an error is: the key path, and the field or type found there ---------------------------------


def _bare(tp):
    """`tp` without Annotated and without an optional None."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _metadata(tp) -> list:
    """Annotated metadata anywhere along `tp`'s optional/Annotated wrappers (a Field's own constraints too)."""
    found: list = []
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp, *extra = typing.get_args(tp)
            for m in extra:
                found += [m, *m.metadata] if isinstance(m, FieldInfo) else [m]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return found
            tp = args[0]
        else:
            return found


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged_member(tp, tag):
    """The model of a union of models whose Literal field (a discriminator such as `method`) is `tag`."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    for member in map(_bare, typing.get_args(tp)):
        if _is_model(member) and any(
            typing.get_origin(_bare(f.annotation)) is Literal and tag in typing.get_args(_bare(f.annotation))
            for f in member.model_fields.values()
        ):
            return member
    return None


@dataclass
class Spot:
    """Where an error's `loc` points: its key path (`ladder[0].engine`), the field it ends on (if it ends on
    one), and the type expected there."""

    key: str
    name: str | None
    field: FieldInfo | None
    tp: Any

    def marks(self) -> list:
        return (list(self.field.metadata) if self.field is not None else []) + _metadata(self.tp)

    def says(self, error_type: str) -> Says | None:
        return next(
            (m for m in self.marks() if isinstance(m, Says) and (m.on is None or error_type in m.on)), None
        )

    def example(self):
        for m in self.marks():
            if isinstance(m, FieldInfo) and m.examples:
                return m.examples[0]
        if self.field is not None and self.field.examples:
            return self.field.examples[0]
        return model_example(_bare(self.tp))


def locate(root: type, loc: tuple) -> Spot:
    tp, key, name, field = root, "", None, None
    for i, part in enumerate(loc):
        inner = _bare(tp)
        if isinstance(part, int):
            args = [a for a in typing.get_args(inner) if a is not Ellipsis]
            tp = args[0] if typing.get_origin(inner) in (list, tuple) and args else Any
            key, name, field = f"{key}[{part}]", None, None
        elif _is_model(inner) and part in inner.model_fields:
            field = inner.model_fields[part]
            tp, name = field.annotation, part
            key = f"{key}.{part}" if key else part
        elif (member := _tagged_member(inner, part)) is not None:
            tp = member  # a union member chosen by its tag: not a key of the file
        elif i == len(loc) - 1:  # an unknown key
            key, name, field, tp = (f"{key}.{part}" if key else str(part)), str(part), None, Any
        # else: a union member's tag (e.g. 'function-after[...]'), not a key of the file
    return Spot(key, name, field, tp)


def key_path(root: type, loc: tuple) -> str:
    return locate(root, loc).key


# --- wording --------------------------------------------------------------------------------------------


def closest(word: str, choices) -> str | None:
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return found[0] if found else None


def flow(value) -> str:
    """`value` as YAML in one line: {ttft_slo_s: 1.0}, [q8_0, q4_k_m]."""
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
        .strip()
        .removesuffix("\n...")
    )


def model_example(model) -> Any:
    return model.example if isinstance(model, type) and issubclass(model, FileModel) else None


def _bounds(marks: list) -> dict:
    found = {}
    for m in marks:
        for k in ("ge", "gt", "le", "lt"):
            if getattr(m, k, None) is not None:
                found[k] = getattr(m, k)
    return found


def number_problem(marks: list, whole: bool, value) -> str:
    b = _bounds(marks)
    kind = "a whole number" if whole else "a number"
    high = b.get("le", b.get("lt"))
    if "gt" in b:
        bound = f"above {b['gt']:g}" + (f" to {high:g}" if high is not None else "")
    elif "ge" in b:
        bound = f"from {b['ge']:g} to {high:g}" if high is not None else f"of at least {b['ge']:g}"
    else:
        bound = f"of at most {high:g}" if high is not None else ""
    return f"must be {kind}{' ' + bound if bound else ''}, got {value!r}"


def type_words(tp) -> str:
    """A type as a user reads it: "a whole number or null", "'wanda' or 'magnitude'"."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return type_words(typing.get_args(tp)[0])
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_words(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {type_words(inner[0]) if inner else 'values'}"
    if tp is type(None):
        return "null"
    if _is_model(tp):
        return "a mapping of settings"
    return {int: "a whole number", float: "a number", str: "text", bool: "true/false"}.get(tp, str(tp))


def _leaf_example(spot: Spot, example) -> str | None:
    """ "e.g. 'max_kld: 0.05'", or "e.g. '- {name: q4_1}'" for an item of a list."""
    if example is None:
        return None
    text = flow(example)
    return f"e.g. '- {text}'" if spot.name is None else f"e.g. '{spot.name}: {text}'"


def explain(err: dict, root: type) -> tuple[str, str, str | None]:
    """(key path, what is wrong, what to write) for one pydantic error on `root`."""
    etype, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, Fix):
        return key_path(root, loc + tuple(error.at)), error.problem, error.write
    if etype == "extra_forbidden":
        here = _bare(locate(root, loc[:-1]).tp)
        known = list(here.model_fields) if _is_model(here) else []
        close = closest(loc[-1], known)
        write = f"'{close}'" if close else (f"one of {', '.join(known)}" if known else "nothing more here")
        return key_path(root, loc), "is not a setting here", write
    spot = locate(root, loc)
    says = spot.says(etype)
    if etype == "missing":
        parent = locate(root, loc[:-1]).key
        named = (
            f"({value['name']}) " if isinstance(value, dict) and isinstance(value.get("name"), str) else ""
        )
        write = says.write if says and says.write else _leaf_example(spot, spot.example())
        return parent or "the file", f"{named}has no {spot.name}", write
    if says is not None and says.problem is not None:
        return spot.key, says.problem.format(value=value), says.write
    return spot.key, *_problem(etype, spot, value, err, says)


def _problem(etype: str, spot: Spot, value, err: dict, says: Says | None) -> tuple[str, str | None]:
    bare = _bare(spot.tp)
    example = _leaf_example(spot, spot.example())
    write = says.write if says and says.write else example
    if etype in ("model_type", "model_attributes_type", "dict_type") or _is_model(bare):
        return f"must be a mapping of settings, got {type(value).__name__}", write
    if etype in ("list_type", "tuple_type"):
        return f"must be a list, got {value!r}", write
    if etype == "too_short" and bare is not str:
        return "is empty", write
    if etype == "value_error":
        return str((err.get("ctx") or {}).get("error", err["msg"])), write
    if bare in (int, float):
        return number_problem(spot.marks(), bare is int, value), write
    if bare is bool:
        return f"must be true or false, got {value!r}", write
    if typing.get_origin(bare) is Literal:
        choices = typing.get_args(bare)
        return f"'{value}' is not a choice here", " or ".join(map(str, choices))
    if bare is str:
        return f"must be text, got {value!r}", write
    return f"must be {type_words(spot.tp)}, got {value!r}", write


def json_schema(model: type[BaseModel], title: str, description: str) -> dict:
    """`model`'s JSON Schema (validation side) as an editor reads it: dialect, title and description first."""
    schema = model.model_json_schema()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": title,
        "description": description,
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
