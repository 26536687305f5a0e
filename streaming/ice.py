"""ICE settings for the gateway's peer connections: no STUN servers, and optionally loopback candidates.

aiortc, given no configuration, asks a public STUN server for a reflexive candidate; the
gateway never does (it serves peers that reach it directly). aioice gathers host candidates
from `aioice.ice.get_host_addresses`, which leaves out 127.0.0.1, and neither aioice nor
aiortc has an option to keep it. Peers on the same host (the loopback tests, a browser beside
the gateway) need it, so `allow_loopback_candidates` wraps that one module-level function:
the narrowest hook there is, since `Connection.gather_candidates` looks the function up in its
module on every call. It only adds an address; everything else aioice does is unchanged.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration

_original_get_host_addresses = aioice.ice.get_host_addresses


def rtc_configuration() -> RTCConfiguration:
    """Host candidates only: an explicit empty list keeps aiortc from its default public STUN server."""
    return RTCConfiguration(iceServers=[])


def allow_loopback_candidates(only_loopback: bool = True) -> None:
    """Make every later ICE gathering in this process offer 127.0.0.1: alone, or before the others.

    Alone is the default: a peer on the same host needs nothing else, and no traffic of a local
    call then leaves the loopback interface.
    """

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if not use_ipv4:
            return [] if only_loopback else _original_get_host_addresses(use_ipv4, use_ipv6)
        if only_loopback:
            return ["127.0.0.1"]
        return ["127.0.0.1", *_original_get_host_addresses(use_ipv4, use_ipv6)]

    aioice.ice.get_host_addresses = get_host_addresses
