"""Latency samples and traceroutes, taken from inside a node's network namespace.

Standard library only; imported by agent.py (the node's thread has already entered the
namespace, so every socket made here lives there). Everything a node was asked for runs
at once in one selector loop: samples are launched `interval_s` apart, not one after
another's answer, so twenty samples over a 600 ms link cost about one round trip. A
`serial` spec (page loads) takes its samples one at a time instead, each `interval_s`
after the previous one ended: concurrent page loads through one tunnel are not what a
lone visitor sees (they share its connection: one ACK or one retransmission releases
them all at once, and a sample started later looks faster).

A sample is lost when it has no complete answer `timeout_s` after it was sent (or an
error: refused, reset, unreachable).

Request items (in a node's spec)::

    "latency": [{"id": 0, "kind": "icmp"|"tcp"|"http", "dst": IP, "port": N, "path": "/",
                 "host": NAME,                                 # http: Host (default: dst)
                 "count": 20, "interval_s": 0.01, "timeout_s": 3.0,
                 "serial": false}],                            # true: one sample at a time
    "traceroute": [{"id": 0, "dst": IP, "proto": "icmp"|"udp"|"tcp", "port": N,
                    "max_hops": 12, "queries": 3, "timeout_s": 3.0}]

Answer (merged into the node's answer)::

    "latency": [{"id": 0, "samples": [MS|null, ...],           # icmp: echo rtt; tcp: connect;
                 "ttfb": [MS|null, ...],                       # http: samples = full page load
                 "errors": {"timeout": N, "refused": N, ...}, "status": [200, ...]}],
    "traceroute": [{"id": 0, "reached": true, "hops": [{"ttl": 1, "replies": [
                    {"addr": IP, "ms": 0.3, "kind": "time-exceeded"|"reached"|"unreachable"}
                    | null, ...]}]}]

ICMP answers are timed with the kernel's receive timestamp (SO_TIMESTAMPNS); connect
and HTTP times are taken when the selector reports the event. A tcp or http sample's
clock starts just before connect() (a new connection each time, no name lookup), a tcp
sample stops when the connection is established, an http one (HTTP/1.0, Connection:
close) when the last byte of the body has come (Content-Length, else the server's close;
a close before Content-Length's bytes came is a lost sample, "cut short"); its ttfb when
the first byte of the reply came.
"""

import bisect
import errno
import random
import selectors
import socket
import struct
import time

SO_TIMESTAMPNS = 35
ICMP_ECHO, ICMP_ECHOREPLY, ICMP_UNREACH, ICMP_TIMXCEED = 8, 0, 3, 11
TRACE_PORT = 33434
TRACE_ROUND_S = 0.03  # between the query rounds of a traceroute: routers' ICMP rate limits


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    body = b"labwarden-latency".ljust(48, b".")
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return header[:2] + struct.pack("!H", checksum(header + body)) + header[4:] + body


def ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 3)


class Sample:
    __slots__ = ("spec", "index", "at", "sent", "sock", "state", "ttfb", "done", "error", "buf", "got", "key")

    def __init__(self, spec, index, at):
        self.spec, self.index, self.at = spec, index, at
        self.sent = self.sock = self.ttfb = self.done = self.error = self.key = None
        self.state, self.buf, self.got = "wait", bytearray(), 0   # buf: the reply's first 4 kB; got: all its bytes


class TraceProbe:
    __slots__ = ("spec", "ttl", "query", "at", "sent", "sock", "key", "reply")

    def __init__(self, spec, ttl, query, at):
        self.spec, self.ttl, self.query, self.at = spec, ttl, query, at
        self.sent = self.sock = self.key = self.reply = None


class Timing:
    def __init__(self, latency: list[dict], traceroute: list[dict]):
        self.latency, self.traceroute = latency, traceroute
        self.sel = selectors.DefaultSelector()
        self.ident = random.randrange(1, 0xFFFF)
        self.seq = 0
        self.icmp = None
        self.by_icmp: dict[tuple, object] = {}     # (id, seq) -> Sample | TraceProbe
        self.by_port: dict[tuple, TraceProbe] = {}  # (proto, sport, dport) -> TraceProbe
        self.samples: list[Sample] = []
        self.probes: list[TraceProbe] = []

    # ------------------------------------------------------------ schedule
    def plan(self, start: float):
        for spec in self.latency:
            serial = bool(spec.get("serial"))
            for i in range(int(spec.get("count", 20))):  # a serial sample's time is set when its turn comes
                at = None if serial and i else start + i * float(spec.get("interval_s", 0.01))
                self.samples.append(Sample(spec, i, at))
        for spec in self.traceroute:
            for q in range(int(spec.get("queries", 3))):
                for ttl in range(1, int(spec.get("max_hops", 12)) + 1):
                    self.probes.append(TraceProbe(spec, ttl, q, start + q * TRACE_ROUND_S))
        self.launches = sorted((x for x in self.samples + self.probes if x.at is not None), key=lambda x: x.at)

    def deadline(self) -> float:
        ends = [(x.sent or x.at) + float(x.spec.get("timeout_s", 3.0))
                for x in self.samples + self.probes if x.at is not None]
        return max(ends, default=time.time())

    def running(self):
        return [x for x in self.samples if x.sent is not None and x.state != "over"]

    def expire(self, now: float, pending: list) -> None:
        """A sample without an answer `timeout_s` after it was sent is lost; a sample that
        is over lets go of its socket, and a serial spec's next one is due `interval_s` later."""
        for x in self.running():
            if x.done is None and x.error is None:
                if now < x.sent + float(x.spec.get("timeout_s", 3.0)):
                    continue
                x.error = "timeout"
            x.state = "over"
            if x.sock is not None:
                try:
                    self.sel.unregister(x.sock)
                except (KeyError, ValueError):
                    pass
                x.sock.close()
            if x.spec.get("serial") and x.index + 1 < int(x.spec.get("count", 20)):
                nxt = next(s for s in self.samples if s.spec is x.spec and s.index == x.index + 1)
                nxt.at = now + float(x.spec.get("interval_s", 0.01))
                bisect.insort(pending, nxt, key=lambda y: y.at)

    # ------------------------------------------------------------ run
    def run(self) -> dict:
        need_icmp = any(s.get("kind") == "icmp" for s in self.latency) or bool(self.traceroute)
        if need_icmp:
            self.icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.icmp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.icmp.setblocking(False)
            self.sel.register(self.icmp, selectors.EVENT_READ, "icmp")
        self.plan(time.time() + 0.005)
        pending = list(self.launches)
        try:
            while True:
                now = time.time()
                while pending and pending[0].at <= now:
                    self.launch(pending.pop(0))
                self.expire(now, pending)
                if not pending and (self.finished() or now >= self.deadline()):
                    break
                wake = [pending[0].at if pending else self.deadline()]
                wake += [x.sent + float(x.spec.get("timeout_s", 3.0)) for x in self.running()]
                wait = min(wake) - now
                for key, events in self.sel.select(max(0.0, wait)):
                    if key.data == "icmp":
                        self.read_icmp()
                    else:
                        self.on_socket(key.data, events)
        finally:
            for x in self.samples + self.probes:
                if x.sock is not None:
                    x.sock.close()
            if self.icmp:
                self.icmp.close()
            self.sel.close()
        return self.answer()

    def finished(self) -> bool:
        if any(s.done is None and s.error is None for s in self.samples):
            return False
        for spec in self.traceroute:  # done once every probe up to the destination has an answer
            mine = [p for p in self.probes if p.spec is spec]
            reached = [p.ttl for p in mine if p.reply and p.reply["kind"] != "time-exceeded"]
            last = min(reached) if reached else int(spec.get("max_hops", 12))
            if any(p.reply is None for p in mine if p.ttl <= last):
                return False
        return True

    # ------------------------------------------------------------ launching
    def launch(self, x):
        if isinstance(x, Sample):
            kind = x.spec.get("kind", "icmp")
            if kind == "icmp":
                self.send_echo(x, None)
            else:
                self.connect(x, None)
        else:
            proto = x.spec.get("proto", "icmp")
            if proto == "icmp":
                self.send_echo(x, x.ttl)
            elif proto == "udp":
                s = x.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, x.ttl)
                s.bind(("0.0.0.0", 0))
                dport = int(x.spec.get("port") or TRACE_PORT + x.ttl - 1 + 64 * x.query)
                x.key = ("udp", s.getsockname()[1], dport)
                self.by_port[x.key] = x
                x.sent = time.time()
                try:
                    s.sendto(b"labwarden-trace", (x.spec["dst"], dport))
                except OSError as e:
                    x.reply = {"addr": None, "ms": None, "kind": f"error: {e.strerror}"}
            else:
                self.connect(x, x.ttl)

    def send_echo(self, x, ttl):
        self.seq = (self.seq + 1) & 0xFFFF
        x.key = (self.ident, self.seq)
        self.by_icmp[x.key] = x
        if ttl is not None:
            self.icmp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        x.sent = time.time()
        try:
            self.icmp.sendto(echo_request(self.ident, self.seq), (x.spec["dst"], 0))
        except OSError as e:
            self.fail(x, e)
        if ttl is not None:
            self.icmp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)

    def connect(self, x, ttl):
        s = x.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if ttl is not None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.bind(("0.0.0.0", 0))
        port = int(x.spec["port"])
        if ttl is not None:
            x.key = ("tcp", s.getsockname()[1], port)
            self.by_port[x.key] = x
        x.sent = time.time()
        err = s.connect_ex((x.spec["dst"], port))
        if err not in (0, errno.EINPROGRESS):
            return self.fail(x, OSError(err, errno.errorcode.get(err, str(err))))
        if isinstance(x, Sample):
            x.state = "connecting"
        self.sel.register(s, selectors.EVENT_WRITE, x)

    def fail(self, x, err: OSError):
        if isinstance(x, Sample):
            x.error = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable",
                       errno.ENETUNREACH: "unreachable", errno.ECONNRESET: "reset"}.get(err.errno, "error")
        elif x.reply is None:
            x.reply = {"addr": None, "ms": None, "kind": f"error: {err.strerror}"}

    # ------------------------------------------------------------ answers
    def on_socket(self, x, events):
        now = time.time()
        if isinstance(x, TraceProbe):  # a tcp traceroute probe reached the destination
            self.sel.unregister(x.sock)
            err = x.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if x.reply is None and err in (0, errno.ECONNREFUSED):
                x.reply = {"addr": x.spec["dst"], "ms": ms(x.sent, now), "kind": "reached"}
            return
        s = x.sock
        if x.state == "connecting":
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.sel.unregister(s)
                return self.fail(x, OSError(err, ""))
            if x.spec.get("kind") == "tcp":
                x.done = now
                self.sel.unregister(s)
                return
            path = x.spec.get("path", "/")
            host = x.spec.get("host") or x.spec["dst"]
            s.send(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: labwarden\r\n"
                   "Connection: close\r\n\r\n".encode())
            x.state = "reading"
            self.sel.modify(s, selectors.EVENT_READ, x)
            return
        try:
            chunk = s.recv(65536)
        except OSError as e:
            self.sel.unregister(s)
            return self.fail(x, e)
        if chunk and x.ttfb is None:
            x.ttfb = now
        x.got += len(chunk)
        x.buf += chunk[:4096 - len(x.buf)] if len(x.buf) < 4096 else b""
        missing = self.missing(x)
        if not chunk and missing:
            self.sel.unregister(s)
            x.error = "cut short"    # closed before the whole body came: no page
        elif not chunk or missing == 0:
            x.done = now
            self.sel.unregister(s)

    @staticmethod
    def missing(x) -> int | None:
        """How many bytes of the body have yet to come (Content-Length), None if unknown."""
        head, sep, _ = bytes(x.buf).partition(b"\r\n\r\n")
        if not sep:
            return None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                return max(0, int(value) - (x.got - len(head) - len(sep)))
        return None

    def read_icmp(self):
        while True:
            try:
                data, anc, _, _ = self.icmp.recvmsg(4096, 64)
            except (BlockingIOError, InterruptedError):
                return
            when = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    when = sec + nsec / 1e9
            self.on_icmp(data, when)

    def on_icmp(self, data: bytes, when: float):
        if len(data) < 28 or data[0] >> 4 != 4:
            return
        hl = (data[0] & 15) * 4
        src = socket.inet_ntoa(data[12:16])
        icmp = data[hl:]
        kind, code = icmp[0], icmp[1]
        if kind == ICMP_ECHOREPLY and len(icmp) >= 8:
            x = self.by_icmp.get(struct.unpack_from("!HH", icmp, 4))
            if x is None or src != x.spec["dst"]:
                return
            if isinstance(x, Sample):
                if x.done is None and x.error is None:
                    x.done = when
            elif x.reply is None:
                x.reply = {"addr": src, "ms": ms(x.sent, when), "kind": "reached"}
            return
        if kind not in (ICMP_UNREACH, ICMP_TIMXCEED) or len(icmp) < 36:
            return
        inner = icmp[8:]
        ihl = (inner[0] & 15) * 4
        proto, l4 = inner[9], inner[ihl:]
        if len(l4) < 8:
            return
        if proto == 1 and l4[0] == ICMP_ECHO:
            x = self.by_icmp.get(struct.unpack_from("!HH", l4, 4))
        elif proto in (6, 17):
            sport, dport = struct.unpack_from("!HH", l4)
            x = self.by_port.get(("tcp" if proto == 6 else "udp", sport, dport))
        else:
            return
        if x is None:
            return
        if isinstance(x, Sample):
            if x.done is None and x.error is None:
                x.error = "unreachable"
            return
        if x.reply is None:
            if kind == ICMP_TIMXCEED:
                what = "time-exceeded"
            elif code == 3 and src == x.spec["dst"]:
                what = "reached"  # port unreachable from the destination itself
            else:
                what = "unreachable"
            x.reply = {"addr": src, "ms": ms(x.sent, when), "kind": what}

    def answer(self) -> dict:
        out = {}
        if self.latency:
            rows = []
            for spec in self.latency:
                mine = [s for s in self.samples if s.spec is spec]
                errors: dict[str, int] = {}
                for s in mine:
                    if s.done is None:
                        why = s.error or "timeout"
                        errors[why] = errors.get(why, 0) + 1
                row = {"id": spec["id"], "samples": [ms(s.sent, s.done) if s.done and s.sent else None
                                                     for s in mine], "errors": errors}
                if spec.get("kind") == "http":
                    row["ttfb"] = [ms(s.sent, s.ttfb) if s.ttfb and s.sent and s.done else None for s in mine]
                    row["status"] = [status_of(s.buf) for s in mine]
                rows.append(row)
            out["latency"] = rows
        if self.traceroute:
            rows = []
            for spec in self.traceroute:
                mine = [p for p in self.probes if p.spec is spec]
                reached = sorted(p.ttl for p in mine if p.reply and p.reply["kind"] == "reached")
                last = reached[0] if reached else int(spec.get("max_hops", 12))
                hops = []
                for ttl in range(1, last + 1):
                    replies = [p.reply for p in sorted(mine, key=lambda p: p.query) if p.ttl == ttl]
                    hops.append({"ttl": ttl, "replies": replies})
                rows.append({"id": spec["id"], "reached": bool(reached), "hops": hops})
            out["traceroute"] = rows
        return out


def status_of(buf: bytearray) -> int | None:
    line = bytes(buf).split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else None


def measure(latency: list[dict], traceroute: list[dict]) -> dict:
    """Run every latency spec and traceroute of one node at once (in the calling thread's netns)."""
    return Timing(latency or [], traceroute or []).run()
