"""The adaptive server's policy file (YAML), validated before anything loads: each mistake is one line that
names the key and says what to write instead.

    ladder:                      # the variants (or ladder_from_search: latest | SEARCH_ID)
      - {name: q4_1, model: out/q4_1.gguf, engine: llamacpp, threads: 1, kld: 0.0034, decode_j_per_token: 0.11}
    start: q4_1                  # default: the cheapest variant inside the quality budget
    quality: {max_kld: 0.05, window_tokens: 50000, margin: 0.1}
    grid: {csv: grid.csv, speed: 60}          # or {provider: electricitymaps, zone: FR}
    carbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}
    load: {ttft_slo_s: 1.0, queue_slo_s: 0.5, sustain_s: 5, calm_s: 20}
    idle: {unload_after_s: 300, low_load_after_s: 10, low_load_cores: 1}

Sections left out are off, except `quality` (the budget every ladder serves under) and `load` (its defaults).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.serve.grid import MAX_INTENSITY_G_PER_KWH
from greenlm.serve.ladder import NAME_RE

ENGINES = ("llamacpp", "transformers")


class _Where:
    """Builds the one-line errors: file, key path, what is wrong, what to write."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str, write: str) -> GreenlmError:
        return GreenlmError(f"policy {self.source}: {key} {problem}: write {write}")


def _number(where: _Where, key: str, value, *, low: float, high: float | None = None, example, whole=False,
            low_open=False):  # fmt: skip
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and whole:
        ok = float(value).is_integer()
    kind = "a whole number" if whole else "a number"
    if ok:
        ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
    if not ok:
        bound = f"{'above' if low_open else 'from'} {low:g}" + (f" to {high:g}" if high is not None else "")
        if high is None and not low_open:
            bound = f"of at least {low:g}"
        raise where.fail(
            key, f"must be {kind} {bound}, got {value!r}", f"e.g. '{key.split('.')[-1]}: {example}'"
        )
    return int(value) if whole else float(value)


def _numbers(where: _Where, section: str, given: dict, rules: dict[str, dict]) -> dict:
    """The numeric settings of one section that `given` names, each checked by `_number` with its rule
    (bounds, example); a key whose rule says null_is_default may be written as null to keep the default."""
    numbers = {}
    for k, rule in rules.items():
        rule = dict(rule)
        null_is_default = rule.pop("null_is_default", False)
        if k in given and not (null_is_default and given[k] is None):
            numbers[k] = _number(where, f"{section}.{k}", given[k], **rule)
    return numbers


def _numeric_policy(where: _Where, section: str, value, policy_cls: type, example: str, **rules: dict):
    """A policy section whose settings are all numbers: only `policy_cls`'s fields, each checked by its rule."""
    given = _mapping(where, section, value, tuple(f.name for f in fields(policy_cls)), example)
    return policy_cls(**_numbers(where, section, given, rules))


def _text(where: _Where, key: str, value, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.fail(key, f"must be text, got {value!r}", f"e.g. '{key.split('.')[-1]}: {example}'")
    return value.strip()


def _mapping(where: _Where, key: str, value, allowed: tuple[str, ...], example: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.fail(key, f"must be a mapping of settings, got {type(value).__name__}", example)
    for k in value:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"'{close[0]}'" if close else f"one of {', '.join(allowed)}"
            raise where.fail(f"{key}.{k}" if key else str(k), "is not a setting here", hint)
    return value


@dataclass(frozen=True)
class QualityPolicy:
    max_kld: float | None = (
        None  # token-weighted mean KLD of what is served, over the window (None: no budget)
    )
    window_tokens: int = 50_000  # generated tokens the mean is taken over
    margin: float = (
        0.1  # fraction of the budget kept in hand: outside members serve up to budget x (1 - margin)
    )
    min_credit_tokens: int = 2000  # an outside member starts only with credit for this many tokens


@dataclass(frozen=True)
class GridConfig:
    csv: str | None = None
    speed: float = 1.0
    loop: bool = True
    provider: str | None = None
    zone: str | None = None
    url: str | None = None
    token_env: str = "ELECTRICITYMAPS_TOKEN"
    poll_s: float = 300.0


@dataclass(frozen=True)
class CarbonPolicy:
    high_g_per_kwh: float  # at or above: the cheapest variant the budget allows
    low_g_per_kwh: float  # at or below: the best-quality variant; between: keep (hysteresis)


@dataclass(frozen=True)
class LoadPolicy:
    ttft_slo_s: float = 2.0  # p90 time to first token over the recent requests
    queue_slo_s: float = 1.0  # p90 queue wait, and the oldest waiting request's wait
    sustain_s: float = 5.0  # over the SLO this long before stepping up
    calm_s: float = 20.0  # under calm_fraction x the SLO this long before stepping back
    calm_fraction: float = 0.5
    recent_s: float = 10.0  # requests the p90s are taken over (arrived in the last recent_s)
    max_cores: int | None = None  # None: every core the server started with


@dataclass(frozen=True)
class IdlePolicy:
    unload_after_s: float | None = None  # None: never unload
    low_load_after_s: float | None = None  # no request running or queued this long: shrink to low_load_cores
    low_load_cores: int = 1


@dataclass(frozen=True)
class VariantEntry:
    name: str
    model: str | None
    engine: str = "llamacpp"
    threads: int | None = None
    kld: float | None = None
    decode_j_per_token: float | None = None
    decode_tokens_per_s: float | None = None


@dataclass(frozen=True)
class PolicyConfig:
    source: str = "defaults"
    ladder: tuple[VariantEntry, ...] = ()
    ladder_from_search: str | None = None
    start: str | None = None
    interval_s: float = 1.0
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    grid: GridConfig | None = None
    carbon: CarbonPolicy | None = None
    load: LoadPolicy | None = field(default_factory=LoadPolicy)
    idle: IdlePolicy = field(default_factory=IdlePolicy)

    def to_dict(self) -> dict:
        def plain(value):
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        return plain(self)


TOP = ("ladder", "ladder_from_search", "start", "interval_s", "quality", "grid", "carbon", "load", "idle")
VARIANT_KEYS = tuple(f.name for f in fields(VariantEntry))


def _variant(where: _Where, i: int, entry) -> VariantEntry:
    key = f"ladder[{i}]"
    if not isinstance(entry, dict):
        raise where.fail(
            key, f"must be a mapping, got {entry!r}", "e.g. '- {name: q4_1, model: out/q4_1.gguf}'"
        )
    _mapping(where, key, entry, VARIANT_KEYS, "")
    if "name" not in entry:
        raise where.fail(key, "has no name", "e.g. 'name: q4_1' (letters, digits, . _ -)")
    name = _text(where, f"{key}.name", entry["name"], "q4_1")
    if not NAME_RE.match(name):
        raise where.fail(
            f"{key}.name",
            f"'{name}' has characters a name cannot",
            "letters, digits, '.', '_', '-' (up to 64)",
        )
    if "model" not in entry:
        raise where.fail(
            key,
            f"({name}) has no model",
            "e.g. 'model: out/q4_1.gguf' (a .gguf, a model directory, or builtin)",
        )
    model = entry["model"]
    model = (
        None
        if model in (None, "builtin", "default")
        else _text(where, f"{key}.model", model, "out/q4_1.gguf")
    )
    engine = entry.get("engine", "llamacpp")
    if engine not in ENGINES:
        raise where.fail(f"{key}.engine", f"'{engine}' is not an engine greenlm serves", " or ".join(ENGINES))
    threads = entry.get("threads")
    if threads is not None:
        threads = _number(where, f"{key}.threads", threads, low=1, example=1, whole=True)
    figures = _numbers(
        where,
        key,
        entry,
        {
            k: dict(low=0, example=example, null_is_default=True)
            for k, example in (("kld", 0.004), ("decode_j_per_token", 0.11), ("decode_tokens_per_s", 70))
        },
    )
    return VariantEntry(name=name, model=model, engine=engine, threads=threads, **figures)


def _grid(where: _Where, raw, base: Path) -> GridConfig:
    keys = tuple(f.name for f in fields(GridConfig))
    g = _mapping(where, "grid", raw, keys, "'grid: {csv: grid.csv, speed: 60}'")
    has_csv, has_provider = g.get("csv") is not None, g.get("provider") is not None
    if has_csv == has_provider:
        raise where.fail(
            "grid",
            "needs exactly one source",
            "'csv: FILE' (a replayed series) or 'provider: electricitymaps'",
        )
    values: dict = {}
    if has_csv:
        path = Path(_text(where, "grid.csv", g["csv"], "grid.csv")).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.is_file():
            raise where.fail(
                "grid.csv", f"file {path} not found", "the path of a CSV of 'timestamp,g_per_kwh' rows"
            )
        values["csv"] = str(path)
        values["speed"] = _number(
            where, "grid.speed", g.get("speed", 1.0), low=0, low_open=True, high=1e6, example=60
        )
        loop = g.get("loop", True)
        if not isinstance(loop, bool):
            raise where.fail(
                "grid.loop", f"must be true or false, got {loop!r}", "'loop: true' (start the series over)"
            )
        values["loop"] = loop
        for k in ("zone", "url", "token_env", "poll_s"):
            if k in g:
                raise where.fail(
                    f"grid.{k}",
                    "only applies to a provider",
                    "it under 'provider: electricitymaps', or drop it",
                )
    else:
        if g["provider"] != "electricitymaps":
            raise where.fail(
                "grid.provider",
                f"'{g['provider']}' is unknown",
                "'provider: electricitymaps' (or 'csv: FILE')",
            )
        values["provider"] = "electricitymaps"
        values["zone"] = _text(where, "grid.zone", g.get("zone"), "FR")
        if g.get("url") is not None:
            url = _text(
                where, "grid.url", g["url"], "https://api.electricitymap.org/v3/carbon-intensity/latest"
            )
            if not url.startswith(("http://", "https://")):
                raise where.fail("grid.url", f"'{url}' is not an http(s) URL", "an https:// address")
            values["url"] = url
        if "token_env" in g:
            values["token_env"] = _text(where, "grid.token_env", g["token_env"], "ELECTRICITYMAPS_TOKEN")
        values["poll_s"] = _number(where, "grid.poll_s", g.get("poll_s", 300.0), low=1, example=300)
        for k in ("speed", "loop"):
            if k in g:
                raise where.fail(
                    f"grid.{k}", "only applies to a replayed CSV", "it under 'csv: FILE', or drop it"
                )
    return GridConfig(**values)


def parse_policy(data, source: str = "<policy>", base: Path | None = None) -> PolicyConfig:
    """A PolicyConfig from the file's parsed YAML (`base`: where relative paths start)."""
    where = _Where(source)
    base = base or Path.cwd()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GreenlmError(f"policy {source}: the file must be a YAML mapping of sections ({', '.join(TOP)})")
    _mapping(where, "", data, TOP, "")
    values: dict = {"source": source}
    if data.get("ladder") is not None and data.get("ladder_from_search") is not None:
        raise where.fail("ladder", "and ladder_from_search are both given", "one of them")
    if "ladder" in data:
        raw = data["ladder"]
        if not isinstance(raw, list):
            raise where.fail(
                "ladder", "must be a list of variants", "e.g. 'ladder: [{name: q4_1, model: out/q4_1.gguf}]'"
            )
        if not raw:
            raise where.fail(
                "ladder", "is empty", "at least one variant, e.g. '- {name: q4_1, model: out/q4_1.gguf}'"
            )
        entries = tuple(_variant(where, i, e) for i, e in enumerate(raw))
        names = [e.name for e in entries]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise where.fail("ladder", f"names '{dup}' twice", "a distinct name for each variant")
        values["ladder"] = entries
    if data.get("ladder_from_search") is not None:
        values["ladder_from_search"] = _text(
            where, "ladder_from_search", data["ladder_from_search"], "latest"
        )
    if data.get("start") is not None:
        values["start"] = _text(where, "start", data["start"], "q4_1")
        if values.get("ladder") and values["start"] not in [e.name for e in values["ladder"]]:
            names = ", ".join(e.name for e in values["ladder"])
            raise where.fail(
                "start", f"names '{values['start']}', which is not in the ladder", f"one of {names}"
            )
    if "interval_s" in data:
        values["interval_s"] = _number(
            where, "interval_s", data["interval_s"], low=0.05, high=3600, example=1.0
        )

    values["quality"] = _numeric_policy(
        where,
        "quality",
        data.get("quality"),
        QualityPolicy,
        "'quality: {max_kld: 0.05}'",
        max_kld=dict(low=0, high=10, example=0.05, null_is_default=True),
        window_tokens=dict(low=1, example=50000, whole=True),
        min_credit_tokens=dict(low=0, example=2000, whole=True),
        margin=dict(low=0, high=0.99, example=0.1),
    )

    if data.get("grid") is not None:
        values["grid"] = _grid(where, data["grid"], base)
    if data.get("carbon") is not None:
        c = _mapping(
            where,
            "carbon",
            data["carbon"],
            ("high_g_per_kwh", "low_g_per_kwh"),
            "'carbon: {high_g_per_kwh: 400, low_g_per_kwh: 250}'",
        )
        if "high_g_per_kwh" not in c:
            raise where.fail(
                "carbon",
                "has no high_g_per_kwh",
                "e.g. 'high_g_per_kwh: 400' (above it: the cheapest variant)",
            )
        high = _number(
            where,
            "carbon.high_g_per_kwh",
            c["high_g_per_kwh"],
            low=0,
            high=MAX_INTENSITY_G_PER_KWH,
            example=400,
        )
        low = _number(
            where,
            "carbon.low_g_per_kwh",
            c.get("low_g_per_kwh", high),
            low=0,
            high=MAX_INTENSITY_G_PER_KWH,
            example=250,
        )
        if low > high:
            raise where.fail(
                "carbon.low_g_per_kwh",
                f"({low:g}) is above high_g_per_kwh ({high:g})",
                "a low threshold at or below the high one",
            )
        if "grid" not in values:
            raise where.fail(
                "carbon",
                "needs a grid intensity that changes",
                "a 'grid:' section ({csv: FILE} or {provider: electricitymaps, zone: FR})",
            )
        values["carbon"] = CarbonPolicy(high, low)
    if "load" in data and data["load"] is False:
        values["load"] = None
    else:
        seconds = dict(low=0, low_open=True, high=86400)
        values["load"] = _numeric_policy(
            where,
            "load",
            data.get("load"),
            LoadPolicy,
            "'load: {ttft_slo_s: 1.0}'",
            ttft_slo_s=dict(seconds, example=1.0),
            queue_slo_s=dict(seconds, example=0.5),
            sustain_s=dict(seconds, example=5),
            calm_s=dict(seconds, example=20),
            recent_s=dict(seconds, example=10),
            calm_fraction=dict(low=0, low_open=True, high=1, example=0.5),
            max_cores=dict(low=1, high=4096, example=2, whole=True, null_is_default=True),
        )
    values["idle"] = _numeric_policy(
        where,
        "idle",
        data.get("idle"),
        IdlePolicy,
        "'idle: {unload_after_s: 300}'",
        unload_after_s=dict(low=0, low_open=True, example=300, null_is_default=True),
        low_load_after_s=dict(low=0, low_open=True, example=10, null_is_default=True),
        low_load_cores=dict(low=1, high=4096, example=1, whole=True),
    )
    return PolicyConfig(**values)


def load_policy(path: str | Path) -> PolicyConfig:
    p, data = read_yaml_file(
        path, "policy file", "give a YAML file (see `greenlm serve --help`)", "a YAML file of policy sections"
    )
    return parse_policy(data, str(path), p.resolve().parent)
