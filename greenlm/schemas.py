"""The JSON Schemas of the files greenlm reads (policy, search space, recipe), for editors that check YAML as
it is typed: with the schema saved beside the files, a first line such as

    # yaml-language-server: $schema=policy.schema.json

makes VS Code's YAML extension (and other yaml-language-server clients) flag unknown keys, out-of-range
values and wrong types. The schemas come from the same pydantic models the loaders validate with.
"""

from __future__ import annotations

import json
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.io import check_file_target, write_text_atomic

KINDS = ("policy", "space", "recipe")


# One function per kind, each importing its own model: the policy's needs no torch, the others the methods.
def _policy() -> dict:
    from greenlm.serve.policy_file import policy_schema

    return policy_schema()


def _space() -> dict:
    from greenlm.optimize.space import space_schema

    return space_schema()


def _recipe() -> dict:
    from greenlm.compress.recipe import recipe_schema

    return recipe_schema()


def file_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one kind of file: policy (serve --policy), space (optimize --space)
    or recipe (compress --recipe)."""
    makers = {"policy": _policy, "space": _space, "recipe": _recipe}
    if kind not in makers:
        raise GreenlmError(f"no schema named '{kind}': choose policy, space or recipe")
    return makers[kind]()


def schema_text(kind: str) -> str:
    return json.dumps(file_schema(kind), indent=2) + "\n"


def write_schema(kind: str, out: str | Path) -> Path:
    """Write `kind`'s schema to `out` (whole or not at all, replacing an older one)."""
    text = schema_text(kind)
    target = Path(out).expanduser()
    check_file_target(target, overwrite=True)
    return write_text_atomic(target, text)
