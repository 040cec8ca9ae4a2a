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
names the front's members). The idle section unloads a local model and shrinks its cores, which a gateway
does not own, and `ladder_from_search` names local models: both are refused here. The file is a pydantic model
(greenlm.fileformat: one-line errors; `greenlm schema gateway-policy` writes its JSON Schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.fileformat import FileModel, Fix, Says, Text, Whole, json_schema, parse
from greenlm.gateway.energy_metric import url_problem
from greenlm.gateway.upstream import UpstreamSpec, base_url
from greenlm.serve.ladder import ladder_from_search
from greenlm.serve.policy_file import (
    DecodeJPerToken,
    DecodeTokensPerS,
    Kld,
    PolicyConfig,
    PolicyFile,
    RungName,
    with_budget,
)
from greenlm.store import Store

FIGURES = ("kld", "decode_j_per_token", "decode_tokens_per_s")


class UpstreamEntry(FileModel):
    """One rung of the gateway's ladder: an OpenAI-compatible server, with its model's figures."""

    what = "policy"
    example = {"name": "small", "url": "http://127.0.0.1:8081"}
    name: RungName
    url: Annotated[
        Text, Says(write="e.g. 'url: http://127.0.0.1:8081' (an OpenAI-compatible server)", on=("missing",))
    ] = Field(examples=["http://127.0.0.1:8081"], description="The server's base URL (with or without /v1).")
    key_env: Text | None = Field(
        None, examples=["SMALL_KEY"], description="The environment variable holding its API key."
    )
    energy_metric: Text | None = Field(
        None,
        examples=["http://gpu-box:9500/metrics#greenlm:energy_joules_total"],
        description="On another host: its Prometheus energy counter, URL#METRIC[;unit=mJ] (as --energy-metric).",
    )
    pid: Whole | None = Field(
        None, ge=1, examples=[1234], description="On this host: its process (default: found by its port)."
    )
    kld: Kld = None
    decode_j_per_token: DecodeJPerToken = None
    decode_tokens_per_s: DecodeTokensPerS = None
    search: Text | None = Field(
        None,
        examples=["latest"],
        description="Read the figures from this optimize search's front (latest, or a search id).",
    )
    variant: Text | None = Field(
        None, examples=["q4_1-as-is-2t"], description="The front member whose figures these are."
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise Fix(f"'{url}' {problem[0]}", problem[1])
        return base_url(url)

    @model_validator(mode="after")
    def _figures_or_a_search(self) -> UpstreamEntry:
        if self.search is None and self.variant is None:
            return self
        if any(getattr(self, k) is not None for k in FIGURES):
            raise Fix(f"({self.name}) gives figures and a search", "one of them")
        if self.variant is None:
            raise Fix(
                f"({self.name}) names a search but no variant",
                "e.g. 'variant: q4_1-as-is-2t' (a member of the search's front)",
            )
        return self


class GatewayPolicyFile(PolicyFile):
    """A gateway's policy: its ladder of upstreams and what routes new requests (greenlm gateway --policy)."""

    ladder: Annotated[
        tuple[UpstreamEntry, ...],
        Says(
            "must list the upstreams",
            "e.g. 'ladder: [{name: small, url: http://127.0.0.1:8081}]'",
            on=("tuple_type", "too_short", "missing"),
        ),
    ] = Field(min_length=1, description="The upstreams new requests are routed among.")
    ladder_from_search: Annotated[
        SkipJsonSchema[None],
        Says("names local models, which a gateway does not run", "a 'search:' in each ladder entry"),
    ] = None
    idle: Annotated[
        SkipJsonSchema[None],
        Says("unloads models and shrinks cores, which a gateway does not own", "no idle section"),
    ] = None


def parse_gateway_policy(data, source: str = "<policy>", base: Path | None = None) -> GatewayPolicyFile:
    """A GatewayPolicyFile from the file's parsed YAML (`base`: where relative paths start)."""
    if not isinstance(data, dict):
        raise GreenlmError(f"policy {source}: the file must be a YAML mapping with a 'ladder:' of upstreams")
    data = {k: v for k, v in data.items() if not (v is None and k in ("quality", "load", "idle"))}
    return parse(GatewayPolicyFile, data, f"policy {source}", {"base": base or Path.cwd(), "file": True})


def upstream_specs(parsed: GatewayPolicyFile, source: str, db: str | None = None) -> list[UpstreamSpec]:
    """The ladder's upstreams, with each entry's figures: given, or read from the results store."""
    fronts: dict = {}
    specs = []
    for i, e in enumerate(parsed.ladder):
        values = {k: getattr(e, k) for k in ("name", "url", "key_env", "energy_metric", "pid")}
        if e.variant is not None:
            search = e.search or "latest"
            if search not in fronts:
                with Store(db) as store:
                    fronts[search] = ladder_from_search(store, search, check_files=False)
            try:
                member = fronts[search].get(e.variant)
            except GreenlmError as exc:
                raise GreenlmError(f"policy {source}: ladder[{i}].variant: {exc}") from None
            values.update(
                kld=member.kld,
                decode_j_per_token=member.decode_j_per_token,
                decode_tokens_per_s=member.decode_tokens_per_s,
                source=member.source,
            )
        elif any(getattr(e, k) is not None for k in FIGURES):
            values.update({k: getattr(e, k) for k in FIGURES}, source=f"given in policy {source}")
        else:
            values["source"] = "no figures given"
        specs.append(UpstreamSpec(**values))
    return specs


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
    parsed = parse_gateway_policy(data, str(path), p.resolve().parent)
    specs = upstream_specs(parsed, str(path), db)
    # serve's policies read a PolicyConfig: the sections as parsed, with no ladder of local models
    sections = {k: v for k, v in parsed if k not in ("ladder", "ladder_from_search", "idle")}
    policy = PolicyConfig.model_construct(**sections, source=str(path))
    rungs = len(specs) if any(s.kld is not None for s in specs) else 1  # a budget needs figures to keep
    return with_budget(policy, max_kld, rungs), specs


def gateway_policy_schema() -> dict:
    """The gateway policy file's JSON Schema, for editors (`greenlm schema gateway-policy`)."""
    return json_schema(GatewayPolicyFile, "greenlm gateway policy file", GatewayPolicyFile.__doc__)
