"""greenlm.cluster: a dead Ray address is one clear error in seconds, before ray.init would block on it."""

import socket

import pytest

from greenlm.cluster import check_reachable
from greenlm.errors import GreenlmError


def test_a_dead_address_is_refused_and_a_listening_one_passes():
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    for address in (f"127.0.0.1:{dead}", f"ray://127.0.0.1:{dead}"):
        with pytest.raises(GreenlmError, match="cannot reach the Ray cluster at .*ray start --head"):
            check_reachable(address, timeout_s=2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2)
    for left_to_ray in ("auto", "local", "my-head-node"):
        check_reachable(left_to_ray)  # ray.init resolves these itself
