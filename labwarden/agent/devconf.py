"""One network device's IPv4 settings (net.ipv4.conf.DEV.*), set over rtnetlink.

Standard library only. A container's /proc/sys is read-only, and Docker's default
AppArmor profile also denies writing it or remounting it; RTM_SETLINK with
IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF (what `ip` cannot say) needs only NET_ADMIN in the
namespace, and changes the device of the calling thread's network namespace. Global
keys (`all`, `default`, net.ipv4.ip_*) have no device: they come from the node's
compose `sysctls:` (labwarden.realise.sysctls). Values are read back from /proc/sys,
which stays readable.
"""

import os
import socket
import struct

RTM_SETLINK, NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 19, 0x1, 0x4, 0x2
IFLA_AF_SPEC, IFLA_INET_CONF, NLA_F_NESTED = 26, 1, 0x8000
# enum of linux/ip.h: IPV4_DEVCONF_*
KEYS = {"forwarding": 1, "send_redirects": 6, "rp_filter": 8, "accept_local": 23}


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def message(ifindex: int, values: dict[str, int], seq: int = 1) -> bytes:
    """The RTM_SETLINK request that sets these keys on device `ifindex`."""
    conf = b"".join(_attr(KEYS[k], struct.pack("=I", int(v))) for k, v in values.items())
    spec = _attr(IFLA_AF_SPEC | NLA_F_NESTED,
                 _attr(socket.AF_INET | NLA_F_NESTED, _attr(IFLA_INET_CONF | NLA_F_NESTED, conf)))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + spec
    return struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def set_conf(ifname: str, values: dict[str, int]) -> None:
    """Set net.ipv4.conf.IFNAME.KEY for each key; OSError (naming the device) on failure."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ValueError(f"no netlink id known for net.ipv4.conf.*.{', '.join(unknown)}")
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise OSError(f"no device {ifname}") from None
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.sendto(message(index, values), (0, 0))
        reply = sock.recv(65536)
    _, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(err, f"setting {values} on {ifname} over netlink: {os.strerror(err)}")


def read(key: str) -> str | None:
    """A sysctl's value (net.ipv4.conf.DEV.KEY or any other), None if it cannot be read."""
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None
