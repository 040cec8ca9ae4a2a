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

Sections left out are off, except `quality` (the budget every ladder serves under) and `load` (its defaults;
`load: false` turns it off). The sections are pydantic models (greenlm.fileformat): the bounds below are
what the loader checks and what `greenlm schema policy` writes for editors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, Strict, ValidationInfo, field_validator, model_validator

from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.fileformat import FileModel, Fix, Number, Says, Text, Whole, json_schema, parse
from greenlm.grid.reading import MAX_INTENSITY_G_PER_KWH
from greenlm.serve.ladder import NAME_RE

ENGINES = ("llamacpp", "transformers")
SECONDS = dict(gt=0, le=86400)


class _Section(FileModel):
    what = "policy"  # built in code, a bad value reads "policy: max_kld must be ..."


class QualityPolicy(_Section):
    """The quality budget every ladder serves under."""

    example = {"max_kld": 0.05}
    max_kld: Number | None = Field(
        None,
        ge=0,
        le=10,
        examples=[0.05],
        description="Token-weighted mean KLD (nats/token) of what is served, over the window; null: no budget.",
    )
    window_tokens: Whole = Field(
        50_000, ge=1, examples=[50000], description="Generated tokens the mean is taken over."
    )
    margin: Number = Field(
        0.1,
        ge=0,
        le=0.99,
        examples=[0.1],
        description="Fraction of the budget kept in hand: outside members serve up to budget x (1 - margin).",
    )
    min_credit_tokens: Whole = Field(
        2000,
        ge=0,
        examples=[2000],
        description="An outside member starts only with credit for this many tokens.",
    )


class GridConfig(_Section):
    """Where the grid's carbon intensity comes from: a replayed CSV or a live provider (exactly one)."""

    example = {"csv": "grid.csv", "speed": 60}  # or {provider: electricitymaps, zone: FR}
    csv: Text | None = Field(
        None,
        examples=["grid.csv"],
        description="A CSV of 'timestamp,g_per_kwh' rows, replayed (relative to the policy file).",
    )
    speed: Number = Field(
        1.0, gt=0, le=1e6, examples=[60], description="Replay speed: 60 plays an hour of the CSV in a minute."
    )
    loop: Annotated[bool, Strict(), Says(write="'loop: true' (start the series over)")] = Field(
        True, description="Start the CSV over at its end."
    )
    provider: Annotated[
        Literal["electricitymaps"] | None,
        Says("'{value}' is unknown", "'provider: electricitymaps' (or 'csv: FILE')", on=("literal_error",)),
    ] = Field(None, description="A live intensity provider.")
    zone: Text | None = Field(
        None, examples=["FR"], description="The provider's zone (electricitymaps: FR, DE, ...)."
    )
    url: Annotated[
        Text | None,
        Says("'{value}' is not an http(s) URL", "an https:// address", on=("string_pattern_mismatch",)),
    ] = Field(
        None,
        pattern=r"^https?://",
        examples=["https://api.electricitymap.org/v3/carbon-intensity/latest"],
        description="The provider's address, if not its default.",
    )
    token_env: Text = Field(
        "ELECTRICITYMAPS_TOKEN",
        examples=["ELECTRICITYMAPS_TOKEN"],
        description="The variable holding the API token.",
    )
    poll_s: Number = Field(300.0, ge=1, examples=[300], description="Seconds between provider reads.")

    @field_validator("csv")
    @classmethod
    def _csv_file(cls, csv: str | None, info: ValidationInfo) -> str | None:
        if csv is None:
            return None
        path = Path(csv).expanduser()
        if not path.is_absolute():
            path = (info.context or {}).get("base", Path.cwd()) / path
        if not path.is_file():
            raise Fix(f"file {path} not found", "the path of a CSV of 'timestamp,g_per_kwh' rows")
        return str(path)

    @model_validator(mode="after")
    def _one_source(self) -> GridConfig:
        if (self.csv is None) == (self.provider is None):
            raise Fix(
                "needs exactly one source", "'csv: FILE' (a replayed series) or 'provider: electricitymaps'"
            )
        given = self.model_fields_set
        if self.csv is not None:
            for k in ("zone", "url", "token_env", "poll_s"):
                if k in given:
                    raise Fix(
                        "only applies to a provider", "it under 'provider: electricitymaps', or drop it", (k,)
                    )
        else:
            for k in ("speed", "loop"):
                if k in given:
                    raise Fix("only applies to a replayed CSV", "it under 'csv: FILE', or drop it", (k,))
            if self.zone is None:
                raise Fix("is needed with provider electricitymaps", "e.g. 'zone: FR'", ("zone",))
        return self


class CarbonPolicy(_Section):
    """Thresholds on the grid's intensity (gCO2e/kWh) that move the server along its ladder."""

    example = {"high_g_per_kwh": 400, "low_g_per_kwh": 250}
    high_g_per_kwh: Annotated[
        Number, Says(write="e.g. 'high_g_per_kwh: 400' (above it: the cheapest variant)", on=("missing",))
    ] = Field(
        ge=0,
        le=MAX_INTENSITY_G_PER_KWH,
        examples=[400],
        description="At or above: the cheapest variant the budget allows.",
    )
    low_g_per_kwh: Number = Field(
        ge=0,
        le=MAX_INTENSITY_G_PER_KWH,
        examples=[250],
        description="At or below: the best-quality variant; between: keep (hysteresis). Default: high_g_per_kwh.",
    )

    @classmethod
    def adjust_schema(cls, schema: dict) -> None:
        super().adjust_schema(schema)
        schema["required"] = ["high_g_per_kwh"]  # low_g_per_kwh defaults to it (filled in before validation)

    @model_validator(mode="before")
    @classmethod
    def _low_defaults_to_high(cls, data):
        if isinstance(data, dict) and "low_g_per_kwh" not in data and "high_g_per_kwh" in data:
            return {**data, "low_g_per_kwh": data["high_g_per_kwh"]}
        return data

    @model_validator(mode="after")
    def _low_not_above_high(self) -> CarbonPolicy:
        if self.low_g_per_kwh > self.high_g_per_kwh:
            raise Fix(
                f"({self.low_g_per_kwh:g}) is above high_g_per_kwh ({self.high_g_per_kwh:g})",
                "a low threshold at or below the high one",
                ("low_g_per_kwh",),
            )
        return self


class LoadPolicy(_Section):
    """More cores, then a faster variant, when requests wait too long; back when calm."""

    example = {"ttft_slo_s": 1.0}
    ttft_slo_s: Number = Field(
        2.0, **SECONDS, examples=[1.0], description="p90 time to first token over the recent requests."
    )
    queue_slo_s: Number = Field(
        1.0, **SECONDS, examples=[0.5], description="p90 queue wait, and the oldest waiting request's wait."
    )
    sustain_s: Number = Field(
        5.0, **SECONDS, examples=[5], description="Over the SLO this long before stepping up."
    )
    calm_s: Number = Field(
        20.0,
        **SECONDS,
        examples=[20],
        description="Under calm_fraction x the SLO this long before stepping back.",
    )
    calm_fraction: Number = Field(
        0.5, gt=0, le=1, examples=[0.5], description="What counts as calm, of the SLO."
    )
    recent_s: Number = Field(
        10.0,
        **SECONDS,
        examples=[10],
        description="The p90s are over requests that arrived in the last recent_s.",
    )
    max_cores: Whole | None = Field(
        None,
        ge=1,
        le=4096,
        examples=[2],
        description="Cores the server may grow to; null: every core it started with.",
    )


class IdlePolicy(_Section):
    """What the server gives back when nobody is asking."""

    example = {"unload_after_s": 300}
    unload_after_s: Number | None = Field(
        None,
        gt=0,
        examples=[300],
        description="Unload the model after this long without requests; null: never.",
    )
    low_load_after_s: Number | None = Field(
        None,
        gt=0,
        examples=[10],
        description="No request running or queued this long: shrink to low_load_cores.",
    )
    low_load_cores: Whole = Field(1, ge=1, le=4096, examples=[1], description="Cores kept under low load.")


class VariantEntry(_Section):
    """One rung of the ladder: a model and how it runs, with its measured figures."""

    example = {"name": "q4_1", "model": "out/q4_1.gguf"}
    name: Annotated[
        Text,
        Says(
            "'{value}' has characters a name cannot",
            "letters, digits, '.', '_', '-' (up to 64)",
            on=("string_pattern_mismatch",),
        ),
        Says(write="e.g. 'name: q4_1' (letters, digits, . _ -)", on=("missing",)),
    ] = Field(
        pattern=NAME_RE.pattern, examples=["q4_1"], description="Letters, digits, '.', '_', '-' (up to 64)."
    )
    model: Annotated[
        Text | None,
        Says(write="e.g. 'model: out/q4_1.gguf' (a .gguf, a model directory, or builtin)", on=("missing",)),
    ] = Field(
        examples=["out/q4_1.gguf"], description="A .gguf, a model directory, or builtin (null: builtin)."
    )
    engine: Annotated[
        Literal["llamacpp", "transformers"],
        Says("'{value}' is not an engine greenlm serves", " or ".join(ENGINES), on=("literal_error",)),
    ] = Field("llamacpp", description="What runs it.")
    threads: Whole | None = Field(
        None, ge=1, examples=[1], description="CPU threads; null: the engine's default."
    )
    kld: Number | None = Field(
        None,
        ge=0,
        examples=[0.004],
        description="Mean KLD vs the reference (nats/token), from a measurement.",
    )
    decode_j_per_token: Number | None = Field(
        None, ge=0, examples=[0.11], description="Measured decode energy per token (J)."
    )
    decode_tokens_per_s: Number | None = Field(
        None, ge=0, examples=[70], description="Measured decode speed."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _builtin(cls, model):
        return None if model in ("builtin", "default") else model


class PolicyFile(_Section):
    """An adaptive server's policy: its ladder of variants and what moves it along (greenlm serve --policy)."""

    ladder: Annotated[
        tuple[VariantEntry, ...],
        Says(
            "must be a list of variants",
            "e.g. 'ladder: [{name: q4_1, model: out/q4_1.gguf}]'",
            on=("tuple_type",),
        ),
        Says(
            "is empty", "at least one variant, e.g. '- {name: q4_1, model: out/q4_1.gguf}'", on=("too_short",)
        ),
    ] = Field((), min_length=1, description="The variants the server moves between (or ladder_from_search).")
    ladder_from_search: Text | None = Field(
        None, examples=["latest"], description="The ladder an optimize search measured: latest, or its id."
    )
    start: Text | None = Field(
        None,
        examples=["q4_1"],
        description="The variant to start on; default: the cheapest inside the budget.",
    )
    interval_s: Number = Field(
        1.0, ge=0.05, le=3600, examples=[1.0], description="Seconds between decisions."
    )
    quality: QualityPolicy = Field(default_factory=QualityPolicy, description=QualityPolicy.__doc__)
    grid: GridConfig | None = Field(None, description=GridConfig.__doc__)
    carbon: CarbonPolicy | None = Field(None, description=CarbonPolicy.__doc__ + " Needs a grid section.")
    load: LoadPolicy | None = Field(
        default_factory=LoadPolicy,
        description=LoadPolicy.__doc__ + " false: off.",
        json_schema_extra=lambda schema: schema["anyOf"].append({"const": False}),
    )
    idle: IdlePolicy = Field(default_factory=IdlePolicy, description=IdlePolicy.__doc__)

    @classmethod
    def adjust_schema(cls, schema: dict) -> None:
        super().adjust_schema(schema)
        schema["dependentRequired"] = {"carbon": ["grid"]}

    @field_validator("load", mode="before")
    @classmethod
    def _load_off(cls, load):
        return None if load is False else load

    @field_validator("ladder")
    @classmethod
    def _distinct_names(cls, ladder: tuple[VariantEntry, ...]) -> tuple[VariantEntry, ...]:
        names = [e.name for e in ladder]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise Fix(f"names '{dup}' twice", "a distinct name for each variant")
        return ladder

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> PolicyFile:
        if self.ladder and self.ladder_from_search is not None:
            raise Fix("and ladder_from_search are both given", "one of them", ("ladder",))
        names = [e.name for e in self.ladder]
        if self.start is not None and names and self.start not in names:
            raise Fix(
                f"names '{self.start}', which is not in the ladder", f"one of {', '.join(names)}", ("start",)
            )
        # A file's carbon thresholds need an intensity that moves; code (tests) may feed intensities directly.
        if (info.context or {}).get("file") and self.carbon is not None and self.grid is None:
            raise Fix(
                "needs a grid intensity that changes",
                "a 'grid:' section ({csv: FILE} or {provider: electricitymaps, zone: FR})",
                ("carbon",),
            )
        return self


class PolicyConfig(PolicyFile):
    """A policy file's settings and where they came from (a file, "flags" or "defaults")."""

    source: str = "defaults"

    def to_dict(self) -> dict:
        return {"source": self.source, **self.model_dump(mode="json", exclude={"source"})}


TOP = tuple(PolicyFile.model_fields)
VARIANT_KEYS = tuple(VariantEntry.model_fields)


def parse_policy(data, source: str = "<policy>", base: Path | None = None) -> PolicyConfig:
    """A PolicyConfig from the file's parsed YAML (`base`: where relative paths start)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GreenlmError(f"policy {source}: the file must be a YAML mapping of sections ({', '.join(TOP)})")
    # A section written empty (`quality:`) keeps its defaults; in code, load=None is load stepping off.
    data = {k: v for k, v in data.items() if not (v is None and k in ("quality", "load", "idle"))}
    context = {"base": base or Path.cwd(), "file": True}
    parsed = parse(PolicyFile, data, f"policy {source}", context)
    return PolicyConfig.model_construct(**dict(parsed), source=source)


def load_policy(path: str | Path) -> PolicyConfig:
    p, data = read_yaml_file(
        path, "policy file", "give a YAML file (see `greenlm serve --help`)", "a YAML file of policy sections"
    )
    return parse_policy(data, str(path), p.resolve().parent)


def policy_schema() -> dict:
    """The policy file's JSON Schema, for editors (`greenlm schema policy`)."""
    return json_schema(PolicyFile, "greenlm policy file", PolicyFile.__doc__)
