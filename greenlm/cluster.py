"""Starting or joining Ray, shared by `optimize --executor ray` and `serve --ray`.

`ray.init` blocks for a long time on a dead address, so an address is first checked with a plain TCP connect
that answers in seconds. Ray itself is imported only when a caller starts it.
"""

from __future__ import annotations

import socket

from greenlm.errors import GreenlmError


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A GreenlmError unless something listens at `address` (host:port or ray://host:port); `auto`, `local`
    and addresses without a port are left to ray.init, which resolves them itself and fails fast."""
    hostport = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise GreenlmError(
            f"cannot reach the Ray cluster at {address} ({exc}): check the address and that `ray start --head` runs there"
        ) from None


def init_ray(address: str | None = None, **options) -> None:
    """Join the cluster at `address` (checked first), or start a local Ray instance; nothing when this process
    runs Ray already. `options` go to ray.init (namespace, runtime_env, ...); the dashboard, log forwarding
    to the driver and Ray's logging setup are off."""
    import ray

    if address:
        check_reachable(address)
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **options
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise GreenlmError(
            f"cannot start or join Ray at {address or 'a new local instance'}: {exc}"
        ) from None
