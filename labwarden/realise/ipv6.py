"""A dual-stack lab's IPv6 plumbing, beside compose.py (its size): a node's agent setup
for its IPv6 addresses and routes (`setup`), and IPv6 off on the host's side of the lab's
bridges (`silence`: it enters the host's network namespace from the prober, not a node's;
nodes are entered in labwarden.agent.netns only)."""

from __future__ import annotations

import os


def setup(topology, node) -> dict:
    """The agent setup keys of a node's IPv6: `addrs` ([ifname, "addr/len"], added `nodad`)
    and its routes (appended to `routes`, the IPv4 ones before)."""
    prefixes = {s: topology.segments[s].subnet6.prefixlen for s in node.addresses6}
    routes = [["default", str(node.gateway6)]] if node.gateway6 else []
    routes += [[str(prefix), str(hop)] for prefix, hop in node.routes6.items()]
    return {"addrs": [[node.interfaces[s], f"{a}/{prefixes[s]}"] for s, a in node.addresses6.items()],
            "routes6": routes}


def bridges(lab) -> list[str]:
    """The host-side names of the lab's bridges (one a segment)."""
    names = []
    for segment in lab.topology.segments:
        net = lab._client.networks.get(f"{lab.project}_{segment}")
        names.append(net.attrs.get("Options", {}).get("com.docker.network.bridge.name") or f"br-{net.id[:12]}")
    return names


def set_host_ipv6(lab, names: list[str], disabled: bool):
    """net.ipv6.conf.BRIDGE.disable_ipv6 on the host's side of these bridges, written and read
    back: (the bridges now at that value, the command's result).

    Not over netlink: RTM_SETLINK takes no IPv6 devconf (IFLA_AF_SPEC/AF_INET6 accepts
    IFLA_INET6_ADDR_GEN_MODE and IFLA_INET6_TOKEN only; IFLA_INET6_CONF with disable_ipv6
    is refused with EINVAL, measured on Linux 6.18, see README "IPv6"), and what netlink
    can do instead (addrgenmode none, link-locals deleted) leaves the host's IPv6 stack
    on the segment: it still answers a node that sends to one of its other addresses
    with the bridge's MAC address (measured). So /proc/sys, writable in a private mount
    namespace of the prober's, in the host's network namespace (this process's: where
    the bridges are; pid 1's may not be openable)."""
    value = int(disabled)
    script = ('mount -o remount,rw /proc/sys || exit 1; v=$1; shift; for b; do '
              'f=/proc/sys/net/ipv6/conf/$b/disable_ipv6; echo $v > $f && echo "$b $(cat $f)"; done')
    done = lab.prober_exec("nsenter", f"--net=/proc/{os.getpid()}/ns/net", "--", "unshare", "-m", "sh", "-c",
                           script, "sh", str(value), *names)
    read = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)
    return [b for b in names if read.get(b) == str(value)], done


def silence(lab) -> None:
    """IPv6 off on the host's side of the lab's bridges, read back.

    Docker 20.10 leaves a link-local address on every bridge of the host (IPv6 is on by
    default there), and the host answers from it, and from all its other bridges'
    addresses, on every lab segment whose nodes have IPv6: the host would be a neighbour
    of every segment (measured: echo replies and port-unreachables from it). The bridge
    goes on switching frames between the nodes; only the host's own IPv6 stack leaves
    (`set_host_ipv6`). A labwarden lab's bridges only. Where that fails (the engine runs
    in another namespace than Docker's bridges), the lab still starts and says so:
    suites/isolation/test_no_leak.py judges what the host answers, and
    tests/integration/test_host_bridges.py shows it fails when a bridge keeps IPv6."""
    if not lab.topology.lab_ranges6():
        return  # no node has IPv6: nothing on the segments can reach the host's
    names = bridges(lab)
    off, done = set_host_ipv6(lab, names, disabled=True)
    if done.returncode != 0 or len(off) != len(names):
        lab.log(f"labwarden: lab {lab.project}: could not turn IPv6 off on the host's side of bridges "
                f"{', '.join(b for b in names if b not in off)}: the host may answer on the IPv6 segments "
                f"from their link-local addresses (test_no_leak judges it): {done.stderr.strip()[-300:]}")
