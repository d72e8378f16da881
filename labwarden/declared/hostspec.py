"""A live node's host spec (``ssh://user@host:port?sudo=true``): checked, and shown without secrets.

Live mode reaches real hosts, so a spec is held to what labwarden can do safely:

- only ``ssh://``, ``paramiko://`` and ``local://``;
- the host is an IPv4 address, a bracketed IPv6 address or a host name (letters, digits,
  ``.``, ``-``, ``_``; never starting with ``-``, which ssh would read as an option); the user
  likewise; the port a number;
- no password in an ``ssh://`` spec: testinfra would hand it to ``sshpass -p`` on the
  command line, where ``ps`` shows it to every user (use a key, or ``paramiko://``, which
  keeps it in-process);
- only the query keys listed in QUERY_KEYS.

Every message, log line and report shows a spec through `masked`, never as written.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address

from labwarden.errors import ConfigError

SCHEMES = ("ssh", "paramiko", "local")
QUERY_KEYS = ("sudo", "ssh_identity_file", "timeout", "controlpersist")  # sudo: the agent only, as root
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class HostSpec:
    spec: str                  # as written (it may hold a password: show it through `masked`)
    scheme: str
    host: str | None           # None for local://


def masked(spec: str) -> str:
    """The spec as messages and reports show it: any password replaced by ***."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        scheme, rest = "", spec
    netloc, slash, tail = rest.partition("/")
    query = ""
    if not slash and "?" in netloc:
        netloc, _, query = netloc.partition("?")
        tail = ""
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{netloc}{slash}{tail}" + (f"?{query}" if query else "")


def _host_ok(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):
        try:
            IPv6Address(name[1:-1])
            return True
        except ValueError:
            return False
    try:
        ip_address(name)
        return True
    except ValueError:
        return bool(_NAME.match(name)) and ".." not in name


def parse_spec(f, where: str, raw: str) -> HostSpec:
    """A checked host spec; a mistake names file, field and problem, the spec masked."""
    shown = masked(raw)
    if not isinstance(raw, str) or "://" not in raw:
        raise ConfigError(f, where, f"{shown!r} is not a host spec such as ssh://admin@192.168.1.10")
    if any(c.isspace() or ord(c) < 32 for c in raw):
        raise ConfigError(f, where, f"{shown!r}: whitespace or control characters in a host spec")
    url = urllib.parse.urlsplit(raw)
    if url.scheme not in SCHEMES:
        raise ConfigError(f, where, f"{shown!r}: live mode reaches hosts over {', '.join(s + '://' for s in SCHEMES)}"
                                    f" only, not {url.scheme}://")
    for key in urllib.parse.parse_qs(url.query, keep_blank_values=True):
        if key not in QUERY_KEYS:
            raise ConfigError(f, where, f"{shown!r}: unknown option {key!r}; options: {', '.join(QUERY_KEYS)}")
    if url.scheme == "local":
        return HostSpec(raw, "local", None)
    if url.netloc.count("@") > 1:
        raise ConfigError(f, where, f"{shown!r}: more than one '@' (write an '@' inside a user or password as %40)")
    userinfo, _, hostport = url.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if has_password and url.scheme == "ssh":
        raise ConfigError(f, where, f"{shown!r}: a password in an ssh:// spec would reach sshpass's command "
                                    "line, which ps shows to every user: use a key (ssh_identity_file, an agent) "
                                    "or paramiko://, which keeps the password in-process")
    if userinfo and not _USER.match(urllib.parse.unquote(user)):
        raise ConfigError(f, where, f"{shown!r}: {user!r} is not a user name (letters, digits, '.', '-', '_'; "
                                    "not starting with '-')")
    host = hostport
    if hostport.startswith("["):
        host, _, port = hostport.partition("]")
        host, port = host + "]", port.removeprefix(":")
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
    else:
        port = ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f, where, f"{shown!r}: {port!r} is not a port number")
    if not _host_ok(host):
        raise ConfigError(f, where, f"{shown!r}: {host!r} is not an IP address or host name (letters, digits, "
                                    "'.', '-', '_'; not starting with '-', which ssh would take for an option)")
    return HostSpec(raw, url.scheme, host.strip("[]"))
