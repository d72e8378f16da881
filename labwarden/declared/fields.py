"""Field helpers every declared file is read with: YAML, keys, quantities, addresses, names.

One copy of each, so that every file (compose.yaml, policy.yaml, an inventory) reports
a mistake the same way: ConfigError(file, field, problem). ``f`` is the file as messages
show it (see `shown`), ``where`` the field's path in it (``services.web.x-labwarden``).
"""

from __future__ import annotations

import argparse
import math
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import yaml

from labwarden.errors import ConfigError

TIMES = {"ms": 1.0, "s": 1000.0, "us": 0.001}          # -> ms
RATES = {"kbit": 1.0, "mbit": 1000.0, "gbit": 1e6, "bit": 0.001}  # -> kbit/s
PERCENT = {"%": 1.0}
IFNAME_RULE = "1-15 characters among letters, digits, '-', '_' and '.', the first a letter or digit"
# The kernel's dev_valid_name() allows any byte but '/', ':' and whitespace; names also reach
# argv (`tc ... dev NAME`), nftables rules (`iifname "NAME"`) and `ip -batch` lines, where
# quotes, '#', ';', '*' or a leading '-' would change what is said. Real names fit this.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
MAX_BYTES = 1024 * 1024     # a file labwarden reads (compose, policy, inventory, router config)
MAX_NODES = 100_000         # values in a YAML document, its aliases expanded


def shown(path: Path) -> str:
    """A path as messages show it: relative to the working directory when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def lab_root(folder: Path) -> Path:
    """The folder a lab's files must lie in: the lab folder itself, or for a mutant
    (LAB/mutants/NAME/, whose links point at its lab's files) the folder of its lab."""
    folder = Path(folder).resolve()
    lab = folder.parent.parent
    if folder.parent.name == "mutants" and any((lab / n).is_file() for n in COMPOSE_NAMES):
        return lab
    return folder


def resolve(folder: Path, raw) -> Path | None:
    """raw (~ expanded) relative to folder, symlinks followed; None when no path could be
    (a NUL byte, a name too long, a loop of links)."""
    try:
        return (Path(folder) / Path(str(raw)).expanduser()).resolve()
    except (ValueError, OSError, RuntimeError):
        return None


def is_inside(root: Path, path: Path) -> bool:
    root, path = Path(root).resolve(), Path(path).resolve()
    return path == root or root in path.parents


def lab_file(f, where: str, folder: Path, raw) -> Path:
    """A file a lab's own file names (relative to the lab folder), resolved: it must exist
    and lie inside the lab folder (lab_root), symlinks followed: a topology cannot have
    labwarden read /etc/passwd or ../../anything for it."""
    given = Path(folder) / str(raw)
    path = resolve(folder, raw)
    if path is None:
        raise ConfigError(f, where, f"{raw!r} is not a usable path")
    if not is_inside(lab_root(folder), path):
        raise ConfigError(f, where, f"{raw!r} is outside the lab folder {lab_root(folder)}"
                          + (f" (it leads to {path})" if path != given else "")
                          + ": a lab may only name its own files")
    if not path.is_file():
        raise ConfigError(f, where, f"no such file: {given}")
    return path



class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


class _TooBig(yaml.YAMLError):
    """A document whose aliases expand it past MAX_NODES, or that refers to itself."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the
    last silently: a second `allow:` drops the first list) and aliases that expand the
    document past MAX_NODES (an alias bomb) or into itself."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, int] = {}
        for key, _ in node.value:  # before merge keys (<<) are applied: overriding one is fine
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    raise _DuplicateKey(key.value, seen[(key.tag, key.value)], line)
                seen[(key.tag, key.value)] = line
        return node

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node, sizes: dict, open_: set) -> int:
    """Nodes in the document once every alias is expanded (an alias is the same node again)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise _TooBig("an alias refers to a node that contains it (a document without end)")
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes, open_) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    if size > MAX_NODES:
        raise _TooBig(f"its aliases expand it to more than {MAX_NODES} values (an alias bomb?)")
    open_.discard(id(node))
    sizes[id(node)] = size
    return size


def read_text(file: Path, f: str, what: str = "file", limit: int = MAX_BYTES) -> str:
    """A user's text file, read whole: one that cannot be read, is bigger than limit or is
    not UTF-8 is a ConfigError (field: the line of the first bad byte)."""
    try:
        with open(file, "rb") as stream:
            data = stream.read(limit + 1)
    except OSError as e:
        raise ConfigError(f, what, f"cannot be read: {e.strerror or e}") from None
    if len(data) > limit:
        raise ConfigError(f, what, f"is bigger than {limit // 1024} KiB: not a file labwarden reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f, f"line {line}", f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}): save the file as UTF-8") from None


def read_yaml(file: Path, f: str) -> dict:
    """The mapping in a YAML file; syntax errors, duplicate keys, alias bombs, files that are
    too big or not UTF-8 become ConfigError(field='line N')."""
    text = read_text(file, f)
    try:
        doc = yaml.load(text, Loader=_Loader)
    except _DuplicateKey as e:
        raise ConfigError(f, f"line {e.again}", f"duplicate key {e.key!r} (first at line {e.first}): "
                          "YAML would silently keep only the last one; merge them") from None
    except _TooBig as e:
        raise ConfigError(f, "line 1", f"invalid YAML: {e}") from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 1
        context = f"{e.context}: " if e.context else ""
        raise ConfigError(f, f"line {line}", f"invalid YAML: {context}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f, "line 1", f"invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f, "line 1", "invalid YAML: nested too deeply") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f, "line 1", "the file must hold a mapping of keys to settings")
    return doc


def check_keys(f, where: str, raw, known, required=()) -> None:
    """raw is a mapping whose keys are all known and hold every required one.

    where="" checks a file's top level: fields are then the bare keys."""
    at = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise ConfigError(f, where, f"must be a mapping with keys among: {', '.join(known)}")
    for key in raw:
        if key not in known:
            raise ConfigError(f, f"{at}{key}", f"unknown key; known keys: {', '.join(known)}")
    for key in required:
        if key not in raw:
            raise ConfigError(f, f"{at}{key}", "missing: this key is required")


def among(raw, choices) -> bool:
    """Whether raw is one of choices (a node's name, say); a list or a mapping never is."""
    try:
        return raw in choices
    except TypeError:  # unhashable: a list or mapping where a name belongs
        return False


def as_mapping(f, where: str, raw, form: str = "a mapping") -> dict:
    """A mapping field; absent is empty."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f, where, f"must be {form}")
    return raw


def as_list(f, where: str, raw) -> list:
    """A list field; absent is empty."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f, where, "must be a list")
    return raw


def quantity(f, where: str, raw, units: dict, default_unit: str) -> float:
    """A non-negative number with an optional unit among units ('300 ms', '2 mbit', 5),
    in the units' base (the one worth 1.0)."""
    if isinstance(raw, bool):
        raise ConfigError(f, where, f"{raw!r} is not a quantity")
    if isinstance(raw, (int, float)):
        value = float(raw)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z%/]*)\s*", str(raw).lower())
        unit = (m.group(2) if m else "") or default_unit
        unit = unit.removesuffix("/s").removesuffix("ps")
        if not m or unit not in units:
            raise ConfigError(f, where, f"{raw!r} is not a quantity in {', '.join(units)} "
                              f"(e.g. 300 {default_unit})")
        value = float(m.group(1)) * units[unit]
    if not math.isfinite(value):  # .nan, .inf, or more digits than a float holds
        raise ConfigError(f, where, f"{raw!r} is not a finite quantity")
    if value < 0:
        raise ConfigError(f, where, f"{raw!r} must not be negative")
    return value


def within(address, networks) -> bool:
    """Whether the address lies in one of the networks. `ipaddress` compares integers across
    families (an IPv6 address can be "in" an IPv4 network), so the version is checked."""
    return any(address.version == net.version and address in net for net in networks)


def address(f, where: str, raw) -> IPv4Address:
    try:
        return IPv4Address(str(raw))
    except ValueError:
        raise ConfigError(f, where, f"{raw!r} is not an IPv4 address") from None


def network(f, where: str, raw, strict: bool = True) -> IPv4Network:
    try:
        return IPv4Network(str(raw), strict=strict)
    except ValueError as e:
        raise ConfigError(f, where, f"{raw!r} is not an IPv4 subnet such as 198.18.10.0/24 ({e})") from None


def address6(f, where: str, raw) -> IPv6Address:
    try:
        held = IPv6Address(str(raw))
    except ValueError:
        raise ConfigError(f, where, f"{raw!r} is not an IPv6 address such as 2001:db8:0:10::10") from None
    if held.scope_id or held.is_link_local or held.is_multicast or held.is_unspecified or held.is_loopback:
        raise ConfigError(f, where, f"{held} is not a unicast address a lab node can hold "
                          "(link-local, multicast, :: and ::1 are not)")
    return held


def network6(f, where: str, raw, strict: bool = True) -> IPv6Network:
    try:
        return IPv6Network(str(raw), strict=strict)
    except ValueError as e:
        raise ConfigError(f, where, f"{raw!r} is not an IPv6 prefix such as 2001:db8:0:10::/64 ({e})") from None


def valid_ifname(name) -> bool:
    """A name the kernel accepts (dev_valid_name(): shorter than IFNAMSIZ, 16) made of
    characters that mean nothing in a command line or a ruleset (IFNAME_RULE)."""
    return isinstance(name, str) and _IFNAME.fullmatch(name) is not None


MAX_PROBE_TIMEOUT_S = 60.0


def probe_timeout(text) -> float:
    """`--lw-probe-timeout S` (pytest), `--probe-timeout S` (the CLI): seconds in (0, 60]. 0, a
    negative number or nan would let every probe come back 'filtered' at once, and test_no_leak pass vacuously."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_PROBE_TIMEOUT_S:  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, {MAX_PROBE_TIMEOUT_S:g}] "
                                         "(how long a probe waits for an answer, e.g. 1.0)")
    return value
