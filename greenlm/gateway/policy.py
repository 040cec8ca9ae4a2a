"""The gateway's policy file: serve's policy sections (quality, grid, carbon, load; see
`greenlm.serve.policy_file`) over a ladder whose entries are upstream servers instead of local models.

    ladder:
      - {name: small, url: http://127.0.0.1:8081, kld: 0.021, decode_j_per_token: 0.05}
      - {name: big, url: http://gpu-box:8000, kld: 0.001, decode_j_per_token: 0.21, key_env: BIG_KEY,
         energy_metric: "http://gpu-box:9400/metrics#DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}
      - {name: q4, url: http://127.0.0.1:8083, search: latest, variant: q4_1-as-is-2t}   # figures from the store
    start: small
    quality: {max_kld: 0.05}
    carbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}
    grid: {csv: grid.csv, speed: 60}

An entry's figures are given (kld, decode_j_per_token, decode_tokens_per_s), or read from an optimize search
in the results store (`search: latest | SEARCH_ID`, `variant: NAME` as `greenlm serve --ladder-from-search`
names the front's members). The idle section's unload and low-load settings move a local model and its cores,
which a gateway does not own: they are refused here.
"""

from __future__ import annotations

import dataclasses

from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.gateway.upstream import UpstreamSpec, base_url
from greenlm.serve.ladder import NAME_RE, ladder_from_search
from greenlm.serve.policy_file import (
    PolicyConfig,
    QualityPolicy,
    _mapping,
    _number,
    _text,
    _Where,
    parse_policy,
)
from greenlm.store import Store

ENTRY_KEYS = (
    "name", "url", "key_env", "energy_metric", "pid", "kld", "decode_j_per_token", "decode_tokens_per_s",
    "search", "variant",
)  # fmt: skip
FIGURES = ("kld", "decode_j_per_token", "decode_tokens_per_s")


def _entry(where: _Where, i: int, entry, db: str | None, searches: dict) -> UpstreamSpec:
    key = f"ladder[{i}]"
    example = "e.g. '- {name: small, url: http://127.0.0.1:8081}'"
    if not isinstance(entry, dict):
        raise where.fail(key, f"must be a mapping, got {entry!r}", example)
    _mapping(where, key, entry, ENTRY_KEYS, "")
    if "name" not in entry:
        raise where.fail(key, "has no name", "e.g. 'name: small' (letters, digits, . _ -)")
    name = _text(where, f"{key}.name", entry["name"], "small")
    if not NAME_RE.match(name):
        raise where.fail(
            f"{key}.name", f"'{name}' has characters a name cannot", "letters, digits, '.', '_', '-'"
        )
    if "url" not in entry:
        raise where.fail(
            key, f"({name}) has no url", "e.g. 'url: http://127.0.0.1:8081' (an OpenAI-compatible server)"
        )
    try:
        url = base_url(_text(where, f"{key}.url", entry["url"], "http://127.0.0.1:8081"), f"{key}.url")
    except GreenlmError as exc:
        raise GreenlmError(f"policy {where.source}: {exc}") from None
    values: dict = {"name": name, "url": url}
    for k, example_text in (
        ("key_env", "SMALL_KEY"),
        ("energy_metric", "http://host:9500/metrics#greenlm:energy_joules_total"),
    ):
        if entry.get(k) is not None:
            values[k] = _text(where, f"{key}.{k}", entry[k], example_text)
    if entry.get("pid") is not None:
        values["pid"] = _number(where, f"{key}.pid", entry["pid"], low=1, example=1234, whole=True)
    for k in FIGURES:
        if entry.get(k) is not None:
            values[k] = _number(where, f"{key}.{k}", entry[k], low=0, example=0.05)
    if entry.get("search") is not None or entry.get("variant") is not None:
        if any(k in values for k in FIGURES):
            raise where.fail(key, f"({name}) gives figures and a search", "one of them")
        search = _text(where, f"{key}.search", entry.get("search", "latest"), "latest")
        variant = _text(where, f"{key}.variant", entry.get("variant"), "q4_1-as-is-2t")
        if search not in searches:
            with Store(db) as store:
                searches[search] = ladder_from_search(store, search, check_files=False)
        try:
            member = searches[search].get(variant)
        except GreenlmError as exc:
            raise GreenlmError(f"policy {where.source}: {key}.variant: {exc}") from None
        values.update(
            kld=member.kld,
            decode_j_per_token=member.decode_j_per_token,
            decode_tokens_per_s=member.decode_tokens_per_s,
            source=member.source,
        )
    elif any(k in values for k in FIGURES):
        values["source"] = f"given in policy {where.source}"
    else:
        values["source"] = "no figures given"
    return UpstreamSpec(**values)


def load_gateway_policy(
    path: str, db: str | None = None, max_kld: float | None = None
) -> tuple[PolicyConfig, list[UpstreamSpec]]:
    """(the policies, the ladder's upstreams) of a gateway policy file, or one line naming what is wrong."""
    p, data = read_yaml_file(
        path,
        "policy file",
        "give a YAML file (see `greenlm gateway --help`)",
        "a YAML file of policy sections",
    )
    where = _Where(str(path))
    if not isinstance(data, dict):
        raise GreenlmError(f"policy {path}: the file must be a YAML mapping with a 'ladder:' of upstreams")
    raw = data.get("ladder")
    if not isinstance(raw, list) or not raw:
        raise where.fail(
            "ladder", "must list the upstreams", "e.g. 'ladder: [{name: small, url: http://127.0.0.1:8081}]'"
        )
    if data.get("ladder_from_search") is not None:
        raise where.fail(
            "ladder_from_search",
            "names local models, which a gateway does not run",
            "a 'search:' in each ladder entry",
        )
    searches: dict = {}
    specs = [_entry(where, i, e, db, searches) for i, e in enumerate(raw)]
    names = [s.name for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise where.fail("ladder", f"names '{dup}' twice", "a distinct name for each upstream")
    rest = {k: v for k, v in data.items() if k != "ladder"}
    idle = rest.get("idle")
    if isinstance(idle, dict) and any(
        idle.get(k) is not None for k in ("unload_after_s", "low_load_after_s")
    ):
        raise where.fail(
            "idle", "unloads models and shrinks cores, which a gateway does not own", "no idle section"
        )
    start = rest.pop("start", None)
    policy = parse_policy(rest, str(path), p.resolve().parent)
    if start is not None:
        start = _text(where, "start", start, names[0])
        if start not in names:
            raise where.fail(
                "start", f"names '{start}', which is not in the ladder", f"one of {', '.join(names)}"
            )
        policy = dataclasses.replace(policy, start=start)
    if max_kld is not None:
        policy = dataclasses.replace(
            policy, quality=dataclasses.replace(policy.quality, max_kld=float(max_kld))
        )
    if policy.quality.max_kld is None and len(specs) > 1 and any(s.kld is not None for s in specs):
        policy = dataclasses.replace(
            policy, quality=QualityPolicy(0.05, policy.quality.window_tokens, policy.quality.margin)
        )  # serve's default budget for a ladder
    return policy, specs
