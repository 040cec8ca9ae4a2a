"""greenlm gateway: OpenAI's API in front of servers people already run (llama-server, vLLM, llama-cpp-python's
server, greenlm serve), with the energy and carbon of every request in its usage, and serve's policies routing
among them.

    Gateway(GatewayConfig(upstreams=[...]))    the library object; create_gateway_app(gateway) its HTTP app
    run_meter_agent(MeterAgentConfig(...))     `greenlm meter-agent`: a meter's energy as a Prometheus counter

Modules, one job each: config, plan (checks before the port is bound), policy (the ladder of upstreams),
upstream (keys, health), meters (an upstream's process tree on this host, package counters), energy_metric (a
remote Prometheus counter), meter_group (a meter's clock and account), attribution and ledger (the split from
outside), events (an upstream's server-sent events), tokens (counts when an upstream gives none), usage,
load, proxy (the relay), metrics, gateway (composes them), app, http, agent.
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "GatewayConfig": "greenlm.gateway.config",
        "Gateway": "greenlm.gateway.gateway",
        "plan_gateway": "greenlm.gateway.plan",
        "create_gateway_app": "greenlm.gateway.app",
        "run_gateway": "greenlm.gateway.http",
        "MeterAgentConfig": "greenlm.gateway.agent",
        "MeterAgent": "greenlm.gateway.agent",
        "run_meter_agent": "greenlm.gateway.agent",
    },
)
