"""The adaptive server's policies: pure functions from what the server observed (and a small memory the caller
keeps between ticks) to decisions. No threads, no clocks, no server: tests drive them with numbers.

Each tick, `decide` combines them:

* quality (token-weighted budget): the mean KLD of the tokens served over the window, counting the tokens
  still to come of requests in flight, decides which variants may serve. A variant outside the budget may
  serve while it has credit: the tokens it could generate before the mean reaches the budget less the margin
  (it needs `min_credit_tokens` of credit to start, and keeps serving while any is left); above the budget
  itself only the best-quality variant serves until the mean is back.
* carbon: at or above `high_g_per_kwh` serve the cheapest variant the quality policy allows; at or below
  `low_g_per_kwh` the best-quality one; in between, keep what the last crossing chose.
* load: the p90 time to first token or queue wait over the SLO for `sustain_s` steps up: first to every core
  (more threads), then to the fastest allowed variant; under `calm_fraction` of the SLO for `calm_s` steps
  back one level.
* idle: no request running or queued for `low_load_after_s` shrinks the server to `low_load_cores` (one
  thread, a smaller CPU affinity); two requests at once (or load pressure) restore every core. After
  `unload_after_s` with nothing to do the model is unloaded; the next request reloads it (the variant pool
  records that reload as a decision of its own).

Decisions are typed (`decisions.SwitchVariant`, `SetCores`, `Unload`): the variant pool carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from greenlm.serve.decisions import Decision, SetCores, SwitchVariant, Unload
from greenlm.serve.ladder import Ladder, Variant
from greenlm.serve.policy_file import PolicyConfig


def p90(values: list[float]) -> float | None:
    """The 90th percentile the load policy compares with its SLOs (None for no values): what the server's
    scheduler and the gateway report."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass(frozen=True)
class State:
    variant: str  # the active variant (the one a reload would load when unloaded)
    cores: int  # CPUs in the affinity mask, and threads
    loaded: bool = True


@dataclass(frozen=True)
class Observed:
    now_s: float
    state: State
    max_cores: int  # the cores the server started with
    running: int = 0
    waiting: int = 0
    peak_concurrency: int = 0  # most requests running + queued at once since the previous tick
    ttft_p90_s: float | None = None  # over requests that got their first token recently
    queue_p90_s: float | None = None  # over requests admitted recently
    oldest_wait_s: float = 0.0  # the longest a queued request has waited so far
    idle_s: float = 0.0  # since a request last ran or waited (0 while any does)
    intensity_g_per_kwh: float | None = None
    served_tokens: int = 0  # generated tokens in the quality window
    served_kld_sum: float = 0.0  # sum of KLD x tokens over them
    pending_tokens: int = 0  # tokens running requests may still generate (on the variant they run on)
    pending_kld_sum: float = 0.0
    waiting_tokens: int = 0  # tokens queued requests may generate (on whichever variant admits them)
    active_kld: float | None = None  # the active variant's KLD

    def mean_kld(self) -> float | None:
        """Token-weighted mean KLD served, counting what requests in flight may still generate (queued ones
        on the active variant)."""
        waiting = self.waiting_tokens if self.active_kld is not None else 0
        tokens = self.served_tokens + self.pending_tokens + waiting
        kld_sum = self.served_kld_sum + self.pending_kld_sum + waiting * (self.active_kld or 0.0)
        return kld_sum / tokens if tokens else None


@dataclass(frozen=True)
class Memory:
    over_since_s: float | None = None
    calm_since_s: float | None = None
    load_level: int = 0  # 0: none; 1: every core; 2: the fastest allowed variant
    carbon_mode: str | None = None  # "high" | "low" | None (no crossing yet)
    quiet_since_s: float | None = None  # since when at most one request at a time
    low_load: bool = False


def start_variant(policy: PolicyConfig, ladder: Ladder) -> Variant:
    """The variant a server starts on: the policy's `start`, else the cheapest inside the budget, else the
    best quality (when nothing is inside)."""
    if policy.start:
        return ladder.get(policy.start)
    return ladder.cheapest(policy.quality.max_kld) or ladder.best_quality()


# ---- quality ----------------------------------------------------------------------------------------------
def credit_tokens(obs: Observed, policy: PolicyConfig, variant: Variant) -> float:
    """How many more tokens `variant` could generate before the token-weighted mean KLD reaches the budget
    less its margin, counting the tokens requests in flight may still generate (queued ones as `variant`'s,
    since they would start on it). Infinite for a variant inside that line, negative once past it."""
    line = policy.quality.max_kld * (1 - policy.quality.margin)
    tokens = obs.served_tokens + obs.pending_tokens + obs.waiting_tokens
    kld_sum = obs.served_kld_sum + obs.pending_kld_sum + obs.waiting_tokens * variant.kld
    if variant.kld <= line:
        return float("inf")
    return (line * tokens - kld_sum) / (variant.kld - line)


def quality_allowed(
    obs: Observed, policy: PolicyConfig, ladder: Ladder, mem: Memory
) -> tuple[list[Variant], str, Memory]:
    """(variants allowed now, status, memory). Status: 'none' (no budget), 'over' (the mean is above the
    budget: the best quality only, until it is back), 'room' (a variant outside the budget has credit) or
    'tight'. An outside variant becomes allowed with at least `min_credit_tokens` of credit and stays allowed
    while it is active and its credit lasts (hysteresis: no switch for a handful of tokens)."""
    budget = policy.quality.max_kld
    if budget is None:
        return list(ladder), "none", mem
    inside = [v for v in ladder if v.inside(budget)] or [ladder.best_quality()]
    mean = obs.mean_kld()
    if mean is not None and mean > budget:
        return [ladder.best_quality()], "over", mem
    outside = []
    for v in ladder:
        if v.kld is None or v.inside(budget):
            continue  # a variant of unknown KLD cannot be budgeted
        credit = credit_tokens(obs, policy, v)
        keep = v.name == obs.state.variant and credit > 0
        if keep or credit >= policy.quality.min_credit_tokens:
            outside.append(v)
    allowed = [v for v in ladder if v in inside or v in outside]
    return allowed, ("room" if outside else "tight"), mem


# ---- carbon -----------------------------------------------------------------------------------------------
def carbon_mode(intensity: float | None, policy: PolicyConfig, previous: str | None) -> str | None:
    c = policy.carbon
    if c is None or intensity is None:
        return None
    if intensity >= c.high_g_per_kwh:
        return "high"
    if intensity <= c.low_g_per_kwh:
        return "low"
    return previous  # between the thresholds: keep the last crossing's choice


# ---- load -------------------------------------------------------------------------------------------------
def load_step(obs: Observed, policy: PolicyConfig, mem: Memory) -> tuple[int, str, Memory]:
    """(change of load level: +1, -1 or 0, why, memory)."""
    lp = policy.load
    if lp is None:
        return 0, "", mem
    over = []
    if obs.ttft_p90_s is not None and obs.ttft_p90_s > lp.ttft_slo_s:
        over.append(f"p90 TTFT {obs.ttft_p90_s:.2f} s > {lp.ttft_slo_s:g} s")
    if obs.queue_p90_s is not None and obs.queue_p90_s > lp.queue_slo_s:
        over.append(f"p90 queue wait {obs.queue_p90_s:.2f} s > {lp.queue_slo_s:g} s")
    if obs.oldest_wait_s > lp.queue_slo_s:
        over.append(f"a request has waited {obs.oldest_wait_s:.2f} s > {lp.queue_slo_s:g} s")
    f = lp.calm_fraction
    calm = (
        not over
        and (obs.ttft_p90_s is None or obs.ttft_p90_s <= f * lp.ttft_slo_s)
        and (obs.queue_p90_s is None or obs.queue_p90_s <= f * lp.queue_slo_s)
        and obs.oldest_wait_s <= f * lp.queue_slo_s
    )
    now = obs.now_s
    if over:
        since = mem.over_since_s if mem.over_since_s is not None else now
        mem = replace(mem, over_since_s=since, calm_since_s=None)
        if now - since >= lp.sustain_s and mem.load_level < 2:
            why = f"{'; '.join(over)} for {now - since:.0f} s"
            return 1, why, replace(mem, over_since_s=now, load_level=mem.load_level + 1)
        return 0, "", mem
    if calm:
        since = mem.calm_since_s if mem.calm_since_s is not None else now
        mem = replace(mem, calm_since_s=since, over_since_s=None)
        if now - since >= lp.calm_s and mem.load_level > 0:
            why = f"under {f:g} x the SLO for {now - since:.0f} s"
            return -1, why, replace(mem, calm_since_s=now, load_level=mem.load_level - 1)
        return 0, "", mem
    return 0, "", replace(mem, over_since_s=None, calm_since_s=None)


# ---- idle -------------------------------------------------------------------------------------------------
def low_load_step(obs: Observed, policy: PolicyConfig, mem: Memory) -> tuple[bool, str, Memory]:
    """(low load now?, why it changed, memory)."""
    after = policy.idle.low_load_after_s
    if after is None:
        return False, "", replace(mem, low_load=False)
    now = obs.now_s
    if obs.peak_concurrency >= 2 or mem.load_level > 0:
        why = f"{obs.peak_concurrency} requests at once" if obs.peak_concurrency >= 2 else "load over the SLO"
        return False, why if mem.low_load else "", replace(mem, quiet_since_s=None, low_load=False)
    since = mem.quiet_since_s if mem.quiet_since_s is not None else now
    mem = replace(mem, quiet_since_s=since)
    if not mem.low_load and now - since >= after:
        return True, f"at most one request at a time for {now - since:.1f} s", replace(mem, low_load=True)
    return mem.low_load, "", mem


# ---- all together -----------------------------------------------------------------------------------------
def decide(obs: Observed, policy: PolicyConfig, ladder: Ladder, mem: Memory) -> tuple[list[Decision], Memory]:
    """This tick's decisions (possibly none) and the memory for the next tick."""
    state = obs.state
    decisions: list[Decision] = []
    current = ladder.get(state.variant)

    # idle unload first: with nothing to do, nothing else matters
    unload_after = policy.idle.unload_after_s
    if (
        state.loaded
        and unload_after is not None
        and obs.idle_s >= unload_after
        and not (obs.running or obs.waiting)
    ):
        decisions.append(
            Unload(variant=state.variant, reason="idle-unload", detail=f"no request for {obs.idle_s:.1f} s")
        )

    allowed, status, mem = quality_allowed(obs, policy, ladder, mem)
    step, load_why, mem = load_step(obs, policy, mem)
    low, low_why, mem = low_load_step(obs, policy, mem)
    top_cores = min(
        obs.max_cores, (policy.load.max_cores if policy.load and policy.load.max_cores else obs.max_cores)
    )
    if step > 0 and mem.load_level == 1 and state.cores >= top_cores:
        mem = replace(mem, load_level=2)  # every core already: the next step is a faster variant
    mode = carbon_mode(obs.intensity_g_per_kwh, policy, mem.carbon_mode)
    mem = replace(mem, carbon_mode=mode)

    # the variant
    mean = obs.mean_kld()
    quality_note = (
        f"served mean KLD {mean:.4f} vs budget {policy.quality.max_kld:g}"
        if mean is not None and policy.quality.max_kld is not None
        else ""
    )
    if status == "over":
        target, reason, why = (
            allowed[0],
            "quality-budget",
            f"{quality_note}: the best-quality variant until it is back",
        )
    elif mode == "high":
        target = min(allowed, key=lambda v: ladder.variants.index(v))
        reason = "carbon-high"
        crossed = ">=" if obs.intensity_g_per_kwh >= policy.carbon.high_g_per_kwh else "since it crossed"
        why = f"grid {obs.intensity_g_per_kwh:.0f} g/kWh {crossed} {policy.carbon.high_g_per_kwh:g}: the cheapest variant allowed ({status})"
    elif mode == "low":
        target = (
            ladder.best_quality()
            if ladder.best_quality() in allowed
            else min(allowed, key=lambda v: (v.kld is None, v.kld or 0.0))
        )
        reason = "carbon-low"
        crossed = "<=" if obs.intensity_g_per_kwh <= policy.carbon.low_g_per_kwh else "since it crossed"
        why = f"grid {obs.intensity_g_per_kwh:.0f} g/kWh {crossed} {policy.carbon.low_g_per_kwh:g}: the best-quality variant"
    else:
        target = start_variant(policy, ladder)
        if target not in allowed:
            target = min(allowed, key=lambda v: ladder.variants.index(v))
        reason, why = "quality-budget", quality_note or "the start variant"
    if mem.load_level >= 2:
        fast = ladder.fastest(allowed)
        if fast is not target and (fast.decode_tokens_per_s or 0) > (target.decode_tokens_per_s or 0):
            target, reason, why = (
                fast,
                "load-slo",
                f"load: {load_why or 'still over the SLO'}: the fastest variant allowed ({status})",
            )
    elif step < 0 and load_why:
        reason, why = "load-calm", f"load: {load_why}; {why}"
    if target is not current:
        if reason == "quality-budget" and quality_note and why == quality_note:
            why = f"{quality_note} ({status}): back to {target.name}"
        decisions.append(SwitchVariant(from_=current.name, to=target.name, reason=reason, detail=why))

    cores = _cores_decision(obs, policy, mem, step, load_why, low, low_why)
    if cores is not None:
        decisions.append(cores)
    return decisions, mem


def _cores_decision(
    obs: Observed, policy: PolicyConfig, mem: Memory, step: int, load_why: str, low: bool, low_why: str
) -> SetCores | None:
    """Every core under load (or above low load), `low_load_cores` at low load, never above load.max_cores;
    None when that is what the server holds already."""
    state = obs.state
    if mem.load_level >= 1 or not low:
        cores = obs.max_cores
    else:
        cores = min(policy.idle.low_load_cores, obs.max_cores)
    capped = policy.load is not None and policy.load.max_cores is not None and cores > policy.load.max_cores
    if capped:
        cores = max(1, policy.load.max_cores)
    if cores == state.cores:
        return None
    if capped and cores < state.cores:
        code, text = "max-cores", f"load.max_cores is {cores}"
    elif mem.load_level >= 1 and step > 0:
        code, text = "load-slo", f"load: {load_why}: every core"
    elif low:
        code, text = "low-load", low_why or "low load"
    elif step < 0:
        code, text = "load-calm", f"load: {load_why}"
    else:
        code, text = "load-rising", low_why or "more than one request at once"
    return SetCores(previous=state.cores, cores=cores, reason=code, detail=text)
