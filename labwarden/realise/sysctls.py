"""The sysctls labwarden gives a lab's nodes, and the compose keys that carry them.

Sysctls reach a node through its service's `sysctls:` key in the compose override that
labwarden generates beside the lab's own file: the container runtime writes them when it
creates the node, before any security profile applies. Nothing writes under /proc/sys
from inside a container: Docker mounts it read-only there, and Docker's default AppArmor
profile (Ubuntu, GitHub's runners) denies both the write and the remount that would get
around it. What the delay line must change on devices it makes itself (its TUNs) it sets
over rtnetlink instead (agent/devconf.py).

The compose override merges with the lab's file key by key, so a key a service sets
itself wins: only the keys it does not set are added. What is added:

- every node: a loss-based TCP congestion control (`congestion_control`);
- every node on a segment with an impaired link, unless impairment is off: what the
  userspace delay line needs, whichever node ends up carrying it (`DELAYLINE`). Harmless
  where netem carries the link instead: see each key.

More keys (IPv6's, say) belong in `wanted`, as a function of the declared lab.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from labwarden.declared.topology import Topology

# What the delay line needs of a node that may carry it (agent/delayline_setup.py):
DELAYLINE = {
    # rp_filter counts max(all, device): with `all` at 0 the TUNs (which get 0 over netlink)
    # pass; every other device keeps the value it had when it was attached, which the
    # runtime sets before these sysctls (so a host's 2 stays 2 on the node's segments).
    "net.ipv4.conf.all.rp_filter": "0",
    # early demux ties an arriving packet to its local socket, and the detour of an
    # ingress leg (arrive, into the TUN, back) then drops it; only a performance shortcut.
    "net.ipv4.ip_early_demux": "0",
}
ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


@functools.cache
def congestion_control(allowed_file: Path = ALLOWED_CC) -> dict[str, str]:
    """A loss-based congestion control, as a laptop's TCP is (cubic, or reno: a namespace may
    only pick one of tcp_allowed_congestion_control). A host may default to BBR, whose
    bandwidth estimate on an idle 600 ms tunnel stays at a few kbit/s, so it paced each page
    out over ~100 ms and concurrent pages queued (measured on the airplane lab)."""
    names = allowed_file.read_text().split() if allowed_file.exists() else []
    chosen = next((n for n in ("cubic", "reno") if n in names), None)
    return {"net.ipv4.tcp_congestion_control": chosen} if chosen else {}


def delayline_candidates(topology: Topology) -> set[str]:
    """The nodes that may carry an impaired link's delay line: every node on its segment."""
    segments = {link.segment for link in topology.links}
    return {name for name, node in topology.nodes.items() if segments & set(node.addresses)}


def wanted(topology: Topology, impair: str = "auto", base: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Per node, the sysctls labwarden adds: what the node's own service does not set."""
    base = congestion_control() if base is None else base
    carriers = delayline_candidates(topology) if impair != "none" else set()
    out = {}
    for name, node in topology.nodes.items():
        keys = {**base, **(DELAYLINE if name in carriers else {})}
        added = {k: v for k, v in keys.items() if k not in node.sysctls}
        if added:
            out[name] = added
    return out


def override_services(per_node: dict[str, dict[str, str]]) -> str:
    """The `services:` entries of a compose override that add these sysctls (YAML text,
    indented under `services:`; names and values quoted as JSON, which YAML reads)."""
    lines = []
    for name, keys in sorted(per_node.items()):
        lines.append(f"  {json.dumps(name)}:")
        lines.append("    sysctls:")
        lines += [f"      {json.dumps(k)}: {json.dumps(str(v))}" for k, v in sorted(keys.items())]
    return "\n".join(lines) + ("\n" if lines else "")
