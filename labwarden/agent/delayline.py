"""labwarden delay line: a userspace link impairment (delay, jitter, loss, rate) for kernels
without sch_netem. Standard library only (Python >= 3.11); runs in the prober, in nodes'
network namespaces, from the agent's zipapp (`python3 delayline.py` here works too):

    python3 agent.pyz delayline start REQUEST     # REQUEST: base64(zlib(JSON)), or - for stdin
    python3 agent.pyz delayline stop [NODE ...]   # stop the relays (all, or these nodes'): plumbing undone
    python3 agent.pyz delayline status [NODE ...] # read back every running relay: plumbing and counters

Each prints one line of JSON. `start` forks one daemon per node; the daemon enters the
node's network namespace (setns), plumbs it, reports what it reads back, then relays
until SIGTERM, when it undoes its plumbing (the TUN devices vanish with it). Request::

    {"run_dir": "/run/labwarden-delayline",
     "nodes": {"sat": {"netns": "/proc/1234/ns/net", "container": ID, "pid_start": N,  # netns.py
       "addresses": ["198.18.71.2", ...],
       "links": [{"id": 0, "name": "sky",
                  "profile": {"delay_ms": 300, "jitter_ms": 10, "loss_pct": 0.5,
                              "rate_kbit": 0, "limit": 10000, "reorder": false},
                  "seed": 1,                                   # optional: repeatable runs
                  "egress": {"ifname": "sky", "routes": [[PREFIX, SRC]],
                             "local": true, "from": ["ground"]},
                  "ingress": {"ifname": "sky", "macs": ["02:42:c6:12:47:01"]}}]}}}

How packets reach the relay, and what else is set up in the node: delayline_setup.py.

Each direction has one FIFO: due = max(arrival + rate serialisation + delay + uniform
jitter in [-jitter, +jitter], previous due) (in order unless `reorder`), loss drops at
arrival, a rate-limited backlog over `limit` packets drops (a congested link). Timers
use select() (microseconds; epoll rounds up to milliseconds). Counters go to
RUN_DIR/NODE.json every second.
"""

import asyncio
import base64
import collections
import heapq
import json
import os
import random
import selectors
import signal
import sys
import time
import zlib

import netns
from delayline_setup import Plumbing, PlumbError, readback, tun_of

RUN_DIR = "/run/labwarden-delayline"
STATUS_EVERY_S = 1.0
EARLY_MAX_S = 0.001


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


# ---------------------------------------------------------------- start / stop / status

def daemon(name: str, node: dict, run_dir: str, report_fd: int):
    """The forked child: enter, plumb, report, relay; never returns."""
    code = 0
    plumbing = None
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(f"{run_dir}/{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(devnull, 0), os.dup2(log, 1), os.dup2(log, 2)
        netns.enter(node)  # checked: the pid is still the node's container's (netns.py)
        plumbing = Plumbing(node)
        plumbing.apply()
        relay = Relay(node["links"], plumbing.fds)
        status_file = f"{run_dir}/{name}.json"
        status = {"node": name, "pid": os.getpid(), "links": node["links"],
                  **{k: node.get(k) for k in ("netns", "container", "pid_start")},
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
        message = str(e) if isinstance(e, (PlumbError, netns.Refused)) else f"{type(e).__name__}: {e}"
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


def relay_pidfd(pid: int) -> int | None:
    """A pidfd of the relay `pid` while it runs as a process of this container, else None: the
    prober shares the host's pid namespace, so a pid reused by a host process is never
    signalled (the pidfd is opened before the check, so it is the process checked)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as theirs, open("/proc/self/cgroup") as ours:
            if theirs.read() == ours.read():
                return fd
    except OSError:
        pass
    os.close(fd)
    return None


def alive(pid: int) -> bool:
    fd = relay_pidfd(pid)
    if fd is not None:
        os.close(fd)
    return fd is not None


def stop(run_dir: str, names=None) -> dict:
    stopped = []
    for name, status in running(run_dir, names).items():
        pid = status.get("pid")
        fd = relay_pidfd(pid) if pid else None
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, signal.SIGTERM)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
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
                        netns.enter(st)
                        os.write(w, json.dumps({"readback": readback(st)}).encode())
                    except netns.Refused as e:
                        os.write(w, json.dumps({"readback_error": f"node {name}: {e}"}).encode())
                    finally:
                        os._exit(0)
                os.close(w)
                with os.fdopen(r) as f:
                    text = f.read()
                os.waitpid(pid, 0)
                st.update(json.loads(text))
            except (OSError, ValueError, PlumbError, netns.Refused) as e:
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
        print(json.dumps({"error": "usage: agent.pyz delayline start REQUEST|- | stop [NODE...] | status [NODE...]"}))
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
