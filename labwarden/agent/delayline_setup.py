"""What the delay line sets up in a node, undoes, and reads back: TUN devices, policy
routing, an nft table, sysctls (the relay itself is delayline.py). Standard library only;
runs in the daemon that delayline.py forks into each node's network namespace (entered
through netns.py, checked).

How packets reach the relay (policy routing, no netfilter hooks in the path):

- egress (packets this node sends onto the link): table 1100+k holds `PREFIX dev lwdKo
  src SRC` for every route of the node that leaves through the link; rules at pref 400
  send locally made packets (`iif lo`) and those forwarded from the `from` interfaces
  there. Pref 400 comes after the local table, so traffic to the node itself never
  enters the line.
- ingress (packets arriving from a sender that cannot carry its own side, e.g. a router
  whose firewall would judge the detour): an nft prerouting chain marks frames from
  `macs`; rules at pref 200 (before the local table, moved from pref 0 to 300) route
  them into lwdKi; TTL-1 packets go to lwdKj with TTL 2, and leave the line with TTL 1,
  so they expire (or are delivered) after their delay, as on a real link.
- written back, a packet re-enters from the TUN; pref 100 rules look it up in the local
  and main tables: delivered, or forwarded on. The detour costs one extra forwarding
  (TTL-1), which the relay gives back (TTL+1, checksum updated): a traceroute sees the
  node once. The TUNs (and an ingress interface) forward, with rp_filter off and
  accept_local on, set per device over netlink (devconf.py); a node that did not forward
  before gets an nft forward chain that lets only the detour through. Nothing is
  written under /proc/sys: what has no device (all.rp_filter 0, ip_early_demux 0 for
  ingress) the node's compose `sysctls:` set, and is only checked here.
"""

import fcntl
import json
import os
import struct
import subprocess

import devconf  # beside this file: a device's net.ipv4.conf.* over netlink

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
NFT_TABLE = "labwarden_delayline"
PREF_BACK, PREF_IN, PREF_LOCAL, PREF_OUT = 100, 200, 300, 400
MARK_BASE = 0x1D100000
TXQUEUELEN = 10000


def table_of(k: int, kind: str) -> int:
    return 1100 + 3 * k + "oij".index(kind)


def tun_of(k: int, kind: str) -> str:
    return f"lwd{k}{kind}"


def mark_of(k: int, kind: str) -> int:
    return MARK_BASE + 2 * k + (kind == "j")


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class PlumbError(Exception):
    pass


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PlumbError(f"`{argv[0]}` is not installed in the prober") from None
    if check and done.returncode != 0:
        raise PlumbError(f"`{' '.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


read_sysctl = devconf.read


def set_devconf(ifname: str, values: dict[str, int]) -> None:
    try:
        devconf.set_conf(ifname, values)
    except OSError as err:
        raise PlumbError(str(err)) from None


def check_sysctls(wanted: dict[str, str]) -> None:
    """Global sysctls the relay relies on: set by the runtime (the node's compose `sysctls:`,
    which labwarden's override adds), never written from here."""
    wrong = {k: read_sysctl(k) for k, v in wanted.items() if read_sysctl(k) != v}
    if wrong:
        raise PlumbError("the delay line needs " + ", ".join(f"{k}={wanted[k]} (it is {v})" for k, v in wrong.items())
                         + " in this node: labwarden's compose override sets them unless the node's service "
                         "sets them itself (labwarden.realise.sysctls)")


class Plumbing:
    """What one node's daemon set up, so that it can undo exactly that."""

    def __init__(self, node: dict):
        self.node, self.links = node, node["links"]
        self.tuns = [tun_of(l["id"], t) for l in self.links
                     for t in (["o"] if l.get("egress") else []) + (["i", "j"] if l.get("ingress") else [])]
        self.ingress = any(l.get("ingress") for l in self.links)
        self.saved: dict[str, str | None] = {}  # ingress interface -> its forwarding before
        self.moved_local = False
        self.fds: dict[str, int] = {}

    def apply(self):
        for name in self.tuns:
            self.fds[name] = open_tun(name)
            sh("ip", "link", "set", name, "txqueuelen", str(TXQUEUELEN), "up")
        was_forwarding = read_sysctl("net.ipv4.ip_forward") == "1"
        check_sysctls({"net.ipv4.conf.all.rp_filter": "0",
                       **({"net.ipv4.ip_early_demux": "0"} if self.ingress else {})})
        # Forwarding is decided by the device a packet arrives on: the TUNs forward (what they
        # write back leaves again), and so does an ingress interface (what arrives there is
        # routed into its TUN); a node that did not forward lets only the detour through (nft).
        for name in self.tuns:
            set_devconf(name, {"forwarding": 1, "rp_filter": 0, "accept_local": 1, "send_redirects": 0})
        for link in self.links:
            iface = (link.get("ingress") or {}).get("ifname")
            if iface and read_sysctl(f"net.ipv4.conf.{iface}.forwarding") != "1":
                self.saved[iface] = read_sysctl(f"net.ipv4.conf.{iface}.forwarding")
                set_devconf(iface, {"forwarding": 1})
        self.nft(was_forwarding)
        batch = []
        for link in self.links:
            k = link["id"]
            if link.get("egress"):
                out = link["egress"]
                for prefix, src in out["routes"]:
                    batch.append(f"route replace {prefix} dev {tun_of(k, 'o')} src {src} table {table_of(k, 'o')}")
                if out.get("local", True):
                    batch.append(f"rule add pref {PREF_OUT} iif lo lookup {table_of(k, 'o')}")
                for iface in out.get("from", []):
                    batch.append(f"rule add pref {PREF_OUT} iif {iface} lookup {table_of(k, 'o')}")
            if link.get("ingress"):
                iface = link["ingress"]["ifname"]
                for t in ("i", "j"):
                    batch.append(f"route replace default dev {tun_of(k, t)} table {table_of(k, t)}")
                    batch.append(f"rule add pref {PREF_IN} iif {iface} fwmark {mark_of(k, t):#x} "
                                 f"lookup {table_of(k, t)}")
        for name in self.tuns:
            batch.append(f"rule add pref {PREF_BACK} iif {name} lookup local")
            batch.append(f"rule add pref {PREF_BACK + 1} iif {name} lookup main")
        if self.ingress:  # ingress rules must come before the local table
            batch.append(f"rule add pref {PREF_LOCAL} lookup local")
            batch.append("rule del pref 0 lookup local")
            self.moved_local = True
        sh("ip", "-batch", "-", stdin="\n".join(batch) + "\n")

    def nft(self, was_forwarding: bool):
        pre = []
        for link in self.links:
            if link.get("ingress"):
                k, iface = link["id"], link["ingress"]["ifname"]
                macs = ", ".join(link["ingress"]["macs"])
                pre.append(f'iifname "{iface}" ether saddr {{ {macs} }} meta mark set {mark_of(k, "i"):#x}')
                pre.append(f'iifname "{iface}" ether saddr {{ {macs} }} ip ttl 1 ip ttl set 2 '
                           f'meta mark set {mark_of(k, "j"):#x}')
        fwd = []
        if not was_forwarding:  # only the detour may be forwarded by a node that did not forward
            own = ", ".join(self.node.get("addresses", [])) or "127.0.0.1"
            fwd = ['oifname "lwd*" accept', f'iifname "lwd*" ip saddr {{ {own} }} accept', "drop"]
        if not pre and not fwd:
            return
        text = f"table ip {NFT_TABLE} {{\n"
        if pre:
            text += "  chain pre {\n    type filter hook prerouting priority -150; policy accept;\n"
            text += "".join(f"    {r}\n" for r in pre) + "  }\n"
        if fwd:
            text += "  chain fwd {\n    type filter hook forward priority -300; policy accept;\n"
            text += "".join(f"    {r}\n" for r in fwd) + "  }\n"
        text += "}\n"
        sh("nft", "-f", "-", stdin=text)

    def undo(self):
        """Remove what apply() added; every step on its own, so one failure leaves no more behind."""
        steps = []
        if self.moved_local:
            steps.append(["ip", "rule", "add", "pref", "0", "lookup", "local"])
        for pref in (PREF_BACK, PREF_BACK + 1, PREF_IN, PREF_OUT) + ((PREF_LOCAL,) if self.moved_local else ()):
            for _ in range(64):
                if subprocess.run(["ip", "rule", "del", "pref", str(pref)], capture_output=True).returncode:
                    break
        for link in self.links:
            for t in "oij":
                steps.append(["ip", "route", "flush", "table", str(table_of(link["id"], t))])
        steps.append(["nft", "delete", "table", "ip", NFT_TABLE])
        for argv in steps:
            subprocess.run(argv, capture_output=True)
        for iface, forwarding in self.saved.items():
            try:
                set_devconf(iface, {"forwarding": int(forwarding or 0)})
            except PlumbError:
                pass
        for fd in self.fds.values():
            os.close(fd)


def readback(node: dict) -> dict:
    """What the namespace holds now: the relay's rules, tables, TUNs, nft and sysctls."""
    rules = [r for r in json.loads(sh("ip", "-j", "rule") or "[]")
             if r.get("priority") in (0, PREF_BACK, PREF_BACK + 1, PREF_IN, PREF_LOCAL, PREF_OUT)]
    tables = {}
    for link in node["links"]:
        for t in "oij":
            table = table_of(link["id"], t)
            try:  # a table that was never made prints "[" and an error
                routes = json.loads(sh("ip", "-j", "route", "show", "table", str(table)) or "[]")
            except (PlumbError, ValueError):
                routes = []
            if routes:
                tables[str(table)] = routes
    links = [{"name": l["ifname"], "up": "UP" in l.get("flags", []), "txqlen": l.get("txqlen")}
             for l in json.loads(sh("ip", "-j", "link") or "[]") if l["ifname"].startswith("lwd")]
    nft = sh("nft", "list", "table", "ip", NFT_TABLE, check=False)
    keys = ["net.ipv4.ip_forward", "net.ipv4.ip_early_demux", "net.ipv4.conf.all.rp_filter"] + [
        f"net.ipv4.conf.{l['name']}.{k}" for l in links for k in ("forwarding", "rp_filter", "accept_local")]
    return {"rules": rules, "tables": tables, "tuns": links, "nft": nft,
            "sysctls": {k: read_sysctl(k) for k in keys}}
