"""The services a labwarden lab node runs, named on its command line.

    lab-services http:80 https:443 ssh:22 git:9418 api:11434 dns:53 discovery
    lab-services www:8080[:/srv/www] tunnel-edge:22[:0.0.0.0:80,...]
    lab-services tunnel -R 0.0.0.0:80:127.0.0.1:8080 root@203.0.113.30
    lab-services kite-front:80:laptop.tunnel.test
    lab-services kite 198.18.60.30:80 http:laptop.tunnel.test:127.0.0.1:8080
    lab-services stop 80 | start 80         (in a running node: stop/start a service)

Each word starts one real server: Python's HTTP server (with a large listen backlog, since the stock
one's backlog of 5 times out under concurrent probes), TLS on top of it, OpenSSH's sshd, git daemon
behind socat (git daemon listens with a backlog of 5 too), a JSON "inference API", dnsmasq answering
for lab.test only (it never forwards a query out of the lab), and a responder to mDNS/SSDP discovery
queries. The process is the container's PID 1: it exits, and stops its children, on SIGTERM.

Publishing a local page the way `python3 -m http.server 8080` and `cloudflared tunnel --url
http://localhost:8080` do:

- `www:PORT[:DIR]` serves the files of DIR (default /srv/www) like `python3 -m http.server PORT`,
  with the large backlog;
- `tunnel-edge:PORT[:LISTEN,...]` is the tunnel's public edge: an sshd that accepts only the keys in
  /tunnel/authorized_keys, only for remote forwards, only on the LISTEN addresses (host:port, e.g.
  0.0.0.0:80), and drops a client that stops answering within a few seconds;
- `tunnel SSH-ARGS...` (the rest of the line) is the client: `ssh -N` with a key made at first start
  in /tunnel (its public half is appended to /tunnel/authorized_keys, a volume the edge shares), an
  outbound connection only, restarted half a second after it ends, as autossh would;
- `kite-front:PORT:KITE` is a PageKite front-end (Debian's `pagekite`): it serves the kite named
  KITE (e.g. laptop.tunnel.test) on PORT, routing by the Host header (CONNECT for raw kites), and
  answers any other name, or a kite that is not connected, with `503 Unavailable`. The kites' shared
  secret is made at its first start in /tunnel/kite-secret (the tunnel-keys volume, which the
  clients share), as a kite service hands one to its users. pagekite's own front-end pings an idle
  tunnel every 20 s at best and gives up on it after ~45 s more; the lab's edge asks its own kite
  for / every second over loopback instead, and restarts the front-end (dropping the tunnel:
  visitors get 503 until the client is back) when two asks in a row get no byte within 3 s: a hung
  client is noticed within ~10 s;
- `kite FRONTEND SERVICE...` (the rest of the line) is the client, as `pagekite.py 8080
  laptop.tunnel.test` is: one outbound connection to FRONTEND (host:port), multiplexing every
  visitor's request on it; each SERVICE is pagekite's `--service_on` without the secret
  (PROTO:KITE:HOST:PORT, e.g. http:laptop.tunnel.test:127.0.0.1:8080, or raw/22:... for a kite
  reached by CONNECT). It waits for the secret and for the front-end to answer, then runs pagekite,
  restarted half a second after it ends or after 4 s without a connection to the front-end
  (pagekite's own retry backs off for 5 to 60 s).

`stop PORT` and `start PORT` ask the node's running lab-services (over the unix socket
/run/lab-services.ctl) to stop or start the service on PORT: a service that is down without its node
being down.
"""

import functools
import http.server
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

PAGE = b"<!doctype html><title>lab</title><p>served by %s</p>\n"
V6_OFF = "/proc/sys/net/ipv6/conf/all/disable_ipv6"  # compose `sysctls:` turn IPv6 on (Docker's default: off)
IPV6 = os.path.exists(V6_OFF) and open(V6_OFF).read().strip() == "0"


class Server(http.server.ThreadingHTTPServer):
    """Dual-stack where the node has IPv6 (one socket on [::]: bindv6only is 0 in a netns)."""
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, address, handler):
        if IPV6:
            self.address_family, address = socket.AF_INET6, ("::", address[1])
        super().__init__(address, handler)


class PageHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    content_type = "text/html"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def http_server(port, tls=False, api=False, directory=None):
    """Start serving; return the server (its shutdown() and server_close() stop it)."""
    host = socket.gethostname()
    if directory is not None:  # `python3 -m http.server PORT`, from DIR
        handler = functools.partial(FileHandler, directory=directory)
    else:
        handler = type("Handler", (PageHandler,), {
            "body": json.dumps({"models": [], "host": host}).encode() if api else PAGE % host.encode(),
            "content_type": "application/json" if api else "text/html",
        })
    server = Server(("0.0.0.0", port), handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain("/etc/labwarden/tls.crt", "/etc/labwarden/tls.key")
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def discovery_responder():
    """Answer every mDNS (5353) and SSDP (1900) datagram, multicast or unicast."""
    for group, port in (("224.0.0.251", 5353), ("239.255.255.250", 1900)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError:
            pass  # no multicast route yet: unicast queries are still answered

        def answer(sock=sock):
            name = socket.gethostname().encode()
            while True:
                _, peer = sock.recvfrom(2048)
                sock.sendto(b"labwarden-discovery " + name, peer)

        threading.Thread(target=answer, daemon=True).start()
        if IPV6:  # unicast queries over IPv6 too (ff02::fb and friends are not joined)
            sock6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1), sock6.bind(("::", port))
            threading.Thread(target=answer, args=(sock6,), daemon=True).start()


CONTROL = "/run/lab-services.ctl"
TUNNEL_DIR = "/tunnel"
KNOWN = "http https api www ssh git dns discovery tunnel-edge tunnel kite-front kite"
KITE_SECRET = f"{TUNNEL_DIR}/kite-secret"
KITE_ASK_EVERY_S, KITE_ANSWER_S, KITE_MISSES = 1.0, 3.0, 2
KITE_RECONNECT_S = 4.0


class Child:
    """A server run as a child process; stop() ends it and frees its port."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)  # PID 1's reaper may get there first: then it returns at once
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Threaded:
    """A server run in this process (the HTTP ones)."""

    def __init__(self, server):
        self.server = server

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def edge_sshd(port, listen):
    """The tunnel edge: sshd for tunnel clients' remote forwards and nothing else."""
    permit = " ".join(listen.split(",")) if listen else "any"
    options = {
        "AuthorizedKeysFile": f"{TUNNEL_DIR}/authorized_keys", "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no", "PermitRootLogin": "prohibit-password",
        "AllowTcpForwarding": "remote", "GatewayPorts": "clientspecified", "PermitListen": permit,
        "PermitOpen": "none", "PermitTTY": "no", "X11Forwarding": "no", "AllowAgentForwarding": "no",
        "AllowStreamLocalForwarding": "no", "ForceCommand": "/bin/false",
        # a client that stops answering (hung, or its link cut) is dropped, and its public
        # port closed, after ClientAliveCountMax unanswered checks ClientAliveInterval apart
        "ClientAliveInterval": "1", "ClientAliveCountMax": "3",
    }
    argv = ["/usr/sbin/sshd", "-D", "-e", "-p", str(port)]
    for key, value in options.items():
        argv += ["-o", f"{key} {value}"]
    return Child(argv)


class Restarting:
    """A command run again half a second after it ends, until stop() (as autossh would):
    a tunnel client must come back by itself."""

    def __init__(self, argv_of):
        self.argv_of = argv_of      # called before each start: may wait, or return None to retry
        self.proc, self.stopped = None, False
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stopped:
            argv = self.argv_of()
            if argv is not None and not self.stopped:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                self.proc.wait()
            time.sleep(0.5)

    def stop(self):
        self.stopped = True
        if self.proc:
            self.proc.terminate()


class TunnelClient(Restarting):
    """`ssh -N ARGS` with this node's key, restarted whenever it ends (as autossh would)."""

    def __init__(self, args):
        host = socket.gethostname()
        self.key = f"{TUNNEL_DIR}/id_ed25519_{host}"
        if not os.path.exists(self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"labwarden-tunnel@{host}",
                            "-f", self.key], check=True, stdout=subprocess.DEVNULL)
            with open(f"{self.key}.pub") as pub, open(f"{TUNNEL_DIR}/authorized_keys", "a") as keys:
                keys.write(pub.read())
        argv = ["ssh", "-N", "-T", "-i", self.key, "-o", "BatchMode=yes",
                "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=2",
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={TUNNEL_DIR}/known_hosts_{host}", *args]
        super().__init__(lambda: argv)


def kite_secret(create=False) -> str | None:
    """The lab's kite secret: made once by the front-end, read by the clients (None: not yet)."""
    if create and not os.path.exists(KITE_SECRET):
        with open(KITE_SECRET, "w") as out:
            out.write(os.urandom(16).hex())
    try:
        with open(KITE_SECRET) as src:
            return src.read().strip() or None
    except FileNotFoundError:
        return None


def answers(host, port, request, within) -> bool:
    """Whether HOST:PORT sends at least one byte back to REQUEST within `within` seconds."""
    try:
        with socket.create_connection((host, port), timeout=within) as sock:
            sock.settimeout(within)
            sock.sendall(request)
            return bool(sock.recv(1))
    except OSError:
        return False


class KiteFront(Restarting):
    """pagekite as a front-end for one kite, restarted when that kite stops answering."""

    def __init__(self, port, kite):
        if not kite:
            sys.exit(f"lab-services: kite-front:{port} needs the kite's name: kite-front:{port}:NAME")
        secret = kite_secret(create=True)
        # --host=0.0.0.0: an IPv4 socket (pagekite listens dual-stack on AF_INET6 otherwise, and
        # the tunnel's connection would show in /proc/net/tcp6 only, not where probes look)
        argv = ["pagekite", "--clean", "--nullui", "--isfrontend", "--host=0.0.0.0", f"--ports={port}",
                "--protos=http,raw", "--rawports=virtual", f"--domain=http,raw:{kite}:{secret}",
                "--logfile=/dev/null"]
        self.ask = (f"GET / HTTP/1.0\r\nHost: {kite}\r\nUser-Agent: lab-services-watchdog\r\n\r\n").encode()
        self.port = port
        super().__init__(lambda: argv)
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self):
        """Ask the kite every second; two asks in a row without a byte back: restart."""
        misses = 0
        while not self.stopped:
            time.sleep(KITE_ASK_EVERY_S)
            misses = 0 if answers("127.0.0.1", self.port, self.ask, KITE_ANSWER_S) else misses + 1
            if misses >= KITE_MISSES and self.proc and not self.stopped:
                self.proc.terminate()   # the loop starts it again, without the hung tunnel
                misses = 0


class KiteClient(Restarting):
    """`pagekite --frontend=FRONTEND --service_on=SERVICE:SECRET...`, restarted when it ends,
    or when it has had no connection to the front-end for KITE_RECONNECT_S: pagekite itself
    retries a lost front-end after 5 to 60 s (randomized back-off), autossh-like tools at once."""

    def __init__(self, args):
        if len(args) < 2 or ":" not in args[0]:
            sys.exit("lab-services: use `kite FRONTEND-HOST:PORT PROTO:KITE:HOST:PORT...`")
        self.frontend = args[0]
        self.services = args[1:]
        super().__init__(self.argv)
        threading.Thread(target=self.watch, daemon=True).start()

    def argv(self):
        """None (try again) until the secret exists and the front-end accepts a connection:
        pagekite backs off for many seconds after a failed start (no route yet, say)."""
        secret = kite_secret()
        host, _, port = self.frontend.rpartition(":")
        if secret is None or not reachable(host, int(port)):
            return None
        return ["pagekite", "--clean", "--nullui", f"--frontend={self.frontend}", "--logfile=/dev/null",
                *[f"--service_on={s}:{secret}" for s in self.services]]

    def watch(self):
        host, _, port = self.frontend.rpartition(":")
        lost = 0.0
        while not self.stopped:
            time.sleep(1.0)
            lost = 0.0 if connected_to(host, int(port)) else lost + 1.0
            if lost >= KITE_RECONNECT_S and self.proc and self.proc.poll() is None:
                self.proc.terminate()
                lost = 0.0


def connected_to(host, port) -> bool:
    """Whether this network namespace has an established TCP connection to HOST:PORT
    (an IPv4 socket, or an IPv6 one to the IPv4-mapped address)."""
    v4 = socket.inet_aton(host)[::-1].hex().upper()
    want = {f"{v4}:{port:04X}", f"0000000000000000FFFF0000{v4}:{port:04X}"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            if any(f[2] in want and f[3] == "01" for f in (line.split() for line in rows.readlines()[1:])):
                return True
    return False


def reachable(host, port) -> bool:
    """Whether HOST:PORT accepts a TCP connection (within 2 s)."""
    try:
        socket.create_connection((host, port), timeout=2.0).close()
        return True
    except OSError:
        return False


def starter(kind, port, extra):
    """The function that starts one service word (and returns what stops it)."""
    if kind in ("http", "https", "api", "www"):
        directory = (extra or "/srv/www") if kind == "www" else None
        return lambda: Threaded(http_server(port, tls=kind == "https", api=kind == "api",
                                            directory=directory))
    if kind == "ssh":
        return lambda: Child(["/usr/sbin/sshd", "-D", "-e", "-p", str(port)])
    if kind == "tunnel-edge":
        return lambda: edge_sshd(port, extra)
    if kind == "kite-front":
        return lambda: KiteFront(port, extra)
    if kind == "git":
        return lambda: Child([
            "socat", f"TCP6-LISTEN:{port},ipv6only=0,fork,reuseaddr,backlog=1024" if IPV6
            else f"TCP-LISTEN:{port},fork,reuseaddr,backlog=1024",
            "EXEC:git daemon --inetd --export-all --base-path=/srv/git /srv/git",
        ])
    if kind == "dns":
        return lambda: Child([
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            f"--port={port}", "--address=/lab.test/198.18.10.10", "--user=root",
        ])
    return None


def control_server(services):
    """Answer `stop PORT` / `start PORT` on the control socket."""
    if os.path.exists(CONTROL):
        os.unlink(CONTROL)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(CONTROL)
    server.listen(8)

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                verb, _, port = conn.recv(256).decode(errors="replace").strip().partition(" ")
                port = int(port) if port.isdigit() else None
                if verb not in ("stop", "start") or port not in services:
                    known = ", ".join(map(str, services)) or "none"
                    conn.sendall(f"error: {verb} {port}: no such service port (ports: {known})\n".encode())
                    continue
                start, handle = services[port]
                if verb == "stop" and handle is not None:
                    handle.stop()
                    services[port] = (start, None)
                elif verb == "start" and handle is None:
                    services[port] = (start, start())
                conn.sendall(f"ok: {verb} {port}\n".encode())

    threading.Thread(target=serve, daemon=True).start()


def control_client(verb, port) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(CONTROL)
    except OSError as e:
        print(f"lab-services: no running lab-services to ask ({CONTROL}: {e.strerror})", file=sys.stderr)
        return 1
    with sock:
        sock.sendall(f"{verb} {port}\n".encode())
        reply = sock.recv(256).decode().strip()
    print(reply)
    return 0 if reply.startswith("ok") else 1


def main(words):
    if words and words[0] in ("stop", "start"):
        sys.exit(control_client(words[0], words[1] if len(words) > 1 else ""))
    services, others = {}, []
    for i, word in enumerate(words):
        kind, _, rest = word.partition(":")
        port, _, extra = rest.partition(":")
        port = int(port) if port.isdigit() else 0
        if kind == "tunnel":
            others.append(TunnelClient(words[i + 1:]))
            break
        if kind == "kite":
            others.append(KiteClient(words[i + 1:]))
            break
        if kind == "discovery":
            discovery_responder()
            continue
        start = starter(kind, port, extra)
        if start is None:
            sys.exit(f"lab-services: unknown service {word!r} (known: {KNOWN})")
        services[port] = (start, start())
    control_server(services)

    def stop(*_):
        for handle in [h for _, h in services.values() if h] + others:
            if isinstance(handle, (Child, Restarting)):
                handle.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            os.wait()  # reap whatever exits; PID 1 must
        except ChildProcessError:
            signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
