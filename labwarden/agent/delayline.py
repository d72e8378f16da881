"""labwarden delay line: a userspace link impairment (delay, jitter, loss, rate) for kernels
without sch_netem. Standard library only (Python >= 3.11); runs in the prober, in nodes'
network namespaces.

    python3 delayline.py start REQUEST     # REQUEST: base64(zlib(JSON)), or - for stdin
    python3 delayline.py stop [NODE ...]   # stop the relays (all, or these nodes'): plumbing undone
    python3 delayline.py status [NODE ...] # read back every running relay: plumbing and counters

Each prints one line of JSON. `start` forks one daemon per node; the daemon enters the
node's network namespace (setns), plumbs it, reports what it reads back, then relays
until SIGTERM, when it undoes its plumbing (the TUN devices vanish with it). Request::

    {"run_dir": "/run/labwarden-delayline",
     "nodes": {"sat": {"netns": "/proc/1234/ns/net", "addresses": ["198.18.71.2", ...],
       "links": [{"id": 0, "name": "sky",
                  "profile": {"delay_ms": 300, "jitter_ms": 10, "loss_pct": 0.5,
                              "rate_kbit": 0, "limit": 10000, "reorder": false},
                  "seed": 1,                                   # optional: repeatable runs
                  "egress": {"ifname": "sky", "routes": [[PREFIX, SRC]],
                             "local": true, "from": ["ground"]},
                  "ingress": {"ifname": "sky", "macs": ["02:42:c6:12:47:01"]}}]}}}

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
  node once. rp_filter is loose and accept_local on on the TUNs; a node that did not
  forward before gets ip_forward=1 and an nft forward chain that lets only the detour
  through.

Each direction has one FIFO: due = max(arrival + rate serialisation + delay + uniform
jitter in [-jitter, +jitter], previous due) (in order unless `reorder`), loss drops at
arrival, a rate-limited backlog over `limit` packets drops (a congested link). Timers
use select() (microseconds; epoll rounds up to milliseconds). Counters go to
RUN_DIR/NODE.json every second.
"""

import asyncio
import base64
import collections
import ctypes
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
import zlib

CLONE_NEWNET = 0x40000000
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
RUN_DIR = "/run/labwarden-delayline"
NFT_TABLE = "labwarden_delayline"
PREF_BACK, PREF_IN, PREF_LOCAL, PREF_OUT = 100, 200, 300, 400
MARK_BASE = 0x1D100000
TXQUEUELEN = 10000
STATUS_EVERY_S = 1.0
EARLY_MAX_S = 0.001


def table_of(k: int, kind: str) -> int:
    return 1100 + 3 * k + "oij".index(kind)


def tun_of(k: int, kind: str) -> str:
    return f"lwd{k}{kind}"


def mark_of(k: int, kind: str) -> int:
    return MARK_BASE + 2 * k + (kind == "j")


# ---------------------------------------------------------------- the relay

class Direction:
    """One direction of one link: a FIFO (or a heap when reordering) of packets with due times."""

    def __init__(self, loop, profile: dict, rng: random.Random, stats: dict):
        self.loop, self.rng, self.stats = loop, rng, stats
        self.delay = float(profile.get("delay_ms", 0)) / 1000
        self.jitter = float(profile.get("jitter_ms", 0)) / 1000
        self.loss = float(profile.get("loss_pct", 0)) / 100
        rate = float(profile.get("rate_kbit", 0))
        self.byte_s = 8 / (rate * 1000) if rate else 0.0
        self.limit = int(profile.get("limit", 10000))
        self.reorder = bool(profile.get("reorder", False))
        self.queue = [] if self.reorder else collections.deque()
        self.last_due = self.tx_free = 0.0
        self.timer = None
        self.seq = 0
        self.early = 0.0  # learnt: how late the loop wakes up (timer slack, scheduling)

    def push(self, now: float, fd: int, packet: bytearray, ttl_one: bool):
        st = self.stats
        st["in"] += 1
        if self.loss and self.rng.random() < self.loss:
            st["lost"] += 1
            return
        start = now
        if self.byte_s:
            if len(self.queue) >= self.limit:
                st["overflow"] += 1
                return
            start = max(now, self.tx_free) + len(packet) * self.byte_s
            self.tx_free = start
        due = start + self.delay
        if self.jitter:
            due += self.rng.uniform(-self.jitter, self.jitter)
        if self.reorder:
            self.seq += 1
            heapq.heappush(self.queue, (due, self.seq, fd, packet, ttl_one))
        else:
            if due < self.last_due:
                due = self.last_due
            self.last_due = due
            self.queue.append((due, 0, fd, packet, ttl_one))
        if len(self.queue) > st["max_backlog"]:
            st["max_backlog"] = len(self.queue)
        if self.timer is None or (self.reorder and due < self.timer.when()):
            self.arm()

    def arm(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(self.queue[0][0] - self.early, self.flush) if self.queue else None

    def flush(self):
        self.timer = None
        now = self.loop.time()
        queue, st = self.queue, self.stats
        if queue:  # wake that much earlier next time: writes then land on their due time
            woke_late = now - (queue[0][0] - self.early)
            self.early = min(EARLY_MAX_S, max(0.0, 0.9 * self.early + 0.1 * woke_late))
        edge = now + self.early
        while queue and queue[0][0] <= edge:
            due, _, fd, packet, ttl_one = heapq.heappop(queue) if self.reorder else queue.popleft()
            restore_ttl(packet, ttl_one)
            try:
                os.write(fd, packet)
                st["out"] += 1
                st["late_ms_sum"] += now - due  # seconds until reported
            except OSError:
                st["write_errors"] += 1
        if queue:
            self.arm()


def restore_ttl(packet: bytearray, ttl_one: bool):
    """TTL+1 (the detour's extra forwarding given back), or TTL=1; IPv4 checksum updated (RFC 1624)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return
    old = packet[8]
    new = 1 if ttl_one else min(255, old + 1)
    if new == old:
        return
    word_old, word_new = (old << 8) | packet[9], (new << 8) | packet[9]
    total = (~((packet[10] << 8) | packet[11]) & 0xFFFF) + (~word_old & 0xFFFF) + word_new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    packet[8] = new
    packet[10], packet[11] = (~total >> 8) & 0xFF, ~total & 0xFF


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Relay:
    def __init__(self, links: list[dict], fds: dict[str, int]):
        self.loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self.stats, self.readers = {}, []
        for link in links:
            k, profile = link["id"], link["profile"]
            rng = random.Random(link.get("seed"))
            for kind, tuns in (("egress", ["o"]), ("ingress", ["i", "j"])):
                if not link.get(kind):
                    continue
                stats = self.stats.setdefault(f"{link.get('name', k)} {kind}", dict.fromkeys(
                    ("in", "out", "lost", "overflow", "write_errors", "max_backlog", "late_ms_sum"), 0))
                direction = Direction(self.loop, profile, rng, stats)
                for t in tuns:
                    fd = fds[tun_of(k, t)]
                    self.readers.append(fd)
                    self.loop.add_reader(fd, self.read, fd, direction, t == "j")

    def read(self, fd: int, direction: Direction, ttl_one: bool):
        now = self.loop.time()
        for _ in range(512):  # a batch, then let timers run
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            direction.push(now, fd, bytearray(packet), ttl_one)

    def run(self, status_file: str | None, on_stop):
        stop = self.loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        if status_file:
            self.loop.call_soon(self.write_status, status_file)
        try:
            self.loop.run_until_complete(stop)
        finally:
            on_stop()

    def counters(self) -> dict:
        """The counters, with the mean lateness of a write after its due time in ms."""
        out = {}
        for key, st in self.stats.items():
            st = dict(st)
            st["late_ms_mean"] = round(st.pop("late_ms_sum") * 1000 / st["out"], 4) if st["out"] else None
            out[key] = st
        return out

    def write_status(self, path: str):
        try:
            status = json.loads(open(path).read())
            status["counters"], status["updated"] = self.counters(), time.time()
            with open(path + ".tmp", "w") as f:
                json.dump(status, f)
            os.replace(path + ".tmp", path)
        except (OSError, ValueError):
            pass
        self.loop.call_later(STATUS_EVERY_S, self.write_status, path)


# ---------------------------------------------------------------- plumbing a node

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


def read_sysctl(key: str) -> str | None:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctls(values: dict[str, str]):
    pairs = [f"{k}={v}" for k, v in values.items()]
    if not pairs:
        return
    if subprocess.run(["sysctl", "-q", "-w", *pairs], capture_output=True).returncode != 0:
        # containers mount /proc/sys read-only: write from a private mount namespace
        sh("unshare", "-m", "sh", "-c", 'mount -o remount,rw /proc/sys && exec sysctl -q -w "$@"',
           "sh", *pairs)


class Plumbing:
    """What one node's daemon set up, so that it can undo exactly that."""

    def __init__(self, node: dict):
        self.node, self.links = node, node["links"]
        self.tuns = [tun_of(l["id"], t) for l in self.links
                     for t in (["o"] if l.get("egress") else []) + (["i", "j"] if l.get("ingress") else [])]
        self.ingress = any(l.get("ingress") for l in self.links)
        self.saved: dict[str, str] = {}
        self.moved_local = False
        self.fds: dict[str, int] = {}

    def apply(self):
        for name in self.tuns:
            self.fds[name] = open_tun(name)
            sh("ip", "link", "set", name, "txqueuelen", str(TXQUEUELEN), "up")
        was_forwarding = read_sysctl("net.ipv4.ip_forward") == "1"
        wanted = {"net.ipv4.ip_forward": "1"}
        # A device without an address fails any rp_filter check (the kernel's last resort), and
        # the check uses max(all, device): so the TUNs get 0, and a non-zero `all` moves into
        # every other device, which then filters as before.
        strict_all = int(read_sysctl("net.ipv4.conf.all.rp_filter") or 0)
        if strict_all:
            wanted["net.ipv4.conf.all.rp_filter"] = "0"
            for dev in os.listdir("/proc/sys/net/ipv4/conf"):
                if dev not in ("all", "default") and not dev.startswith("lwd"):
                    own = int(read_sysctl(f"net.ipv4.conf.{dev}.rp_filter") or 0)
                    wanted[f"net.ipv4.conf.{dev}.rp_filter"] = str(max(own, strict_all))
        for name in self.tuns:
            wanted |= {f"net.ipv4.conf.{name}.rp_filter": "0", f"net.ipv4.conf.{name}.accept_local": "1",
                       f"net.ipv4.conf.{name}.send_redirects": "0"}
        if self.ingress:  # early demux ties a packet to its socket, and ip_forward drops such packets
            wanted["net.ipv4.ip_early_demux"] = "0"
        self.saved = {k: read_sysctl(k) for k in wanted if ".lwd" not in k}
        write_sysctls(wanted)
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
        try:
            write_sysctls({k: v for k, v in self.saved.items() if v is not None})
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
    keys = ["net.ipv4.ip_forward", "net.ipv4.ip_early_demux"] + [f"net.ipv4.conf.{l['name']}.{k}" for l in links
                                      for k in ("rp_filter", "accept_local")]
    return {"rules": rules, "tables": tables, "tuns": links, "nft": nft,
            "sysctls": {k: read_sysctl(k) for k in keys}}


# ---------------------------------------------------------------- start / stop / status

def setns(path: str):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise PlumbError(f"setns into {path} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def daemon(name: str, node: dict, run_dir: str, report_fd: int):
    """The forked child: enter, plumb, report, relay; never returns."""
    code = 0
    plumbing = None
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(f"{run_dir}/{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(devnull, 0), os.dup2(log, 1), os.dup2(log, 2)
        if node.get("netns"):
            setns(node["netns"])
        plumbing = Plumbing(node)
        plumbing.apply()
        relay = Relay(node["links"], plumbing.fds)
        status_file = f"{run_dir}/{name}.json"
        status = {"node": name, "pid": os.getpid(), "netns": node.get("netns"), "links": node["links"],
                  "readback": readback(node), "started": time.time(), "counters": relay.counters()}
        with open(status_file, "w") as f:
            json.dump(status, f)
        os.write(report_fd, json.dumps({"ok": status}).encode() + b"\n")
        os.close(report_fd)
        report_fd = -1
        relay.run(status_file, plumbing.undo)
        plumbing = None
        os.unlink(status_file)
    except BaseException as e:  # noqa: BLE001 - a daemon reports, it does not raise
        code = 1
        if plumbing is not None:
            plumbing.undo()
        message = str(e) if isinstance(e, PlumbError) else f"{type(e).__name__}: {e}"
        if report_fd >= 0:
            os.write(report_fd, json.dumps({"error": f"node {name}: {message}"}).encode() + b"\n")
        else:
            print(f"node {name}: {message}", file=sys.stderr)
    finally:
        os._exit(code)


def start(request: dict) -> dict:
    run_dir = request.get("run_dir", RUN_DIR)
    os.makedirs(run_dir, exist_ok=True)
    nodes = request.get("nodes", {})
    stop(run_dir, list(nodes))  # a node has at most one relay
    children = {}
    for name, node in nodes.items():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            daemon(name, node, run_dir, w)
        os.close(w)
        children[name] = (pid, r)
    out = {}
    for name, (pid, r) in children.items():
        with os.fdopen(r) as f:
            line = f.readline()
        try:
            out[name] = json.loads(line)
        except ValueError:
            out[name] = {"error": f"node {name}: the relay died before reporting"}
        if "error" in out[name]:
            os.waitpid(pid, 0)
    return {"nodes": out}


def running(run_dir: str, names=None) -> dict[str, dict]:
    found = {}
    if not os.path.isdir(run_dir):
        return found
    for entry in sorted(os.listdir(run_dir)):
        name = entry[:-5]
        if not entry.endswith(".json") or (names and name not in names):
            continue
        try:
            with open(os.path.join(run_dir, entry)) as f:
                found[name] = json.load(f)
        except (OSError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stop(run_dir: str, names=None) -> dict:
    stopped = []
    for name, status in running(run_dir, names).items():
        pid = status.get("pid")
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 5
            while alive(pid) and time.time() < deadline:
                time.sleep(0.01)
        try:
            os.unlink(os.path.join(run_dir, name + ".json"))
        except OSError:
            pass
        stopped.append(name)
    return {"stopped": stopped}


def status(run_dir: str, names=None) -> dict:
    out = {}
    for name, st in running(run_dir, names).items():
        st["alive"] = bool(st.get("pid")) and alive(st["pid"])
        if st["alive"] and st.get("netns"):
            try:  # a fresh read-back, from inside the node (in a child: setns is for good)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    try:
                        setns(st["netns"])
                        os.write(w, json.dumps(readback(st)).encode())
                    finally:
                        os._exit(0)
                os.close(w)
                with os.fdopen(r) as f:
                    text = f.read()
                os.waitpid(pid, 0)
                st["readback"] = json.loads(text)
            except (OSError, ValueError, PlumbError) as e:
                st["readback_error"] = str(e)
        out[name] = st
    return {"nodes": out}


def decode(arg: str) -> dict:
    text = sys.stdin.read() if arg == "-" else arg
    return json.loads(zlib.decompress(base64.b64decode(text.strip())))


def encode(request: dict) -> str:
    return base64.b64encode(zlib.compress(json.dumps(request).encode())).decode()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("start", "stop", "status"):
        print(json.dumps({"error": "usage: delayline.py start REQUEST|- | stop [NODE...] | status [NODE...]"}))
        return 2
    command, rest = argv[1], argv[2:]
    run_dir = RUN_DIR
    if command == "start":
        if len(rest) != 1:
            print(json.dumps({"error": "start needs one REQUEST"}))
            return 2
        request = decode(rest[0])
        request.setdefault("run_dir", run_dir)
        result = start(request)
    elif command == "stop":
        result = stop(run_dir, rest or None)
    else:
        result = status(run_dir, rest or None)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
