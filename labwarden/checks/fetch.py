"""What a client of a service gets: the request a fetch sends and how its reply reads.

The agent's `fetch` (see probe/agent.py) is one short TCP exchange from a node;
this module picks what to send for a port (an HTTP GET for web ports, over TLS
for 443/8443, nothing for the rest: their banner is the answer) and reads the
reply back as a value that can be compared byte for byte. No Docker here.
"""

from dataclasses import dataclass
from ipaddress import ip_address

from labwarden.declared.policy import Service
from labwarden.probe import Fetch, Fetched

HTTP_PORTS = frozenset({80, 8000, 8080, 8888})
TLS_PORTS = frozenset({443, 8443})
READ_S = 2.0


def http_get(host, path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: labwarden\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode()


def fetch_for(address, port: int, host=None, read_s: float = READ_S) -> Fetch:
    """How a client would talk to this port: HTTP(S) for web ports, else just listen."""
    address = ip_address(str(address))
    if port in HTTP_PORTS or port in TLS_PORTS:
        named = host or (f"[{address}]" if address.version == 6 else address)  # RFC 3986's IPv6 literal
        return Fetch(address, port, http_get(named), tls=port in TLS_PORTS, read_s=read_s)
    return Fetch(address, port, b"", read_s=min(read_s, 1.0))


def is_web(service: Service) -> bool:
    return service.proto == "tcp" and (service.port in HTTP_PORTS or service.port in TLS_PORTS)


@dataclass(frozen=True)
class HttpReply:
    status: int
    reason: str
    headers: dict
    body: bytes
    complete: bool             # the body is as long as Content-Length says (or the peer closed)

    def __str__(self):
        return f"HTTP {self.status} {self.reason}, {len(self.body)} bytes"


def parse_http(fetched: Fetched) -> HttpReply | None:
    """The HTTP response in a fetch's reply, or None if it is not one."""
    data = fetched.reply
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = headers.get("content-length")
    complete = fetched.eof if length is None or not length.isdigit() else len(body) >= int(length)
    if length is not None and length.isdigit():
        body = body[:int(length)]
    return HttpReply(status, parts[2] if len(parts) > 2 else "", headers, body, complete)


def content(fetched: Fetched) -> bytes | None:
    """What a client takes away from the exchange: an HTTP body, else the raw reply
    (a banner); None when nothing usable came back."""
    if not fetched.connected:
        return None
    reply = parse_http(fetched)
    if reply is not None:
        return reply.body if reply.status == 200 and reply.complete else None
    return fetched.reply.split(b"\n", 1)[0] if fetched.reply else None


def summary(fetched: Fetched) -> str:
    """One phrase: what a client got."""
    if not fetched.connected:
        return fetched.explain()
    reply = parse_http(fetched)
    if reply is not None:
        return f"{reply} from {fetched.fetch.dst}:{fetched.fetch.port}" + \
            ("" if reply.complete else " (cut short)")
    return fetched.explain()
