"""What a node's sockets (the agent's `info`) say is listening: no Docker here."""

from labwarden.declared.policy import Service


def listens(info: dict, service: Service, addr) -> bool:
    """Whether the node's sockets (the agent's `info`) have `service` listening on `addr`:
    bound to it or to the wildcard, IPv4 or dual-stack IPv6 (an IPv6 address: IPv6's only)."""
    port = service.port
    if ":" in str(addr):
        wanted = {f"[{addr}]:{port}", f"[::]:{port}"}
    else:
        wanted = {f"{addr}:{port}", f"0.0.0.0:{port}", f"[::]:{port}", f"[::ffff:{addr}]:{port}"}
    state = "LISTEN" if service.proto == "tcp" else "CLOSE"  # a bound, unconnected UDP socket
    return any(sock["local"] in wanted and sock["state"] == state
               for family in (service.proto, service.proto + "6") for sock in info.get(family, []))
