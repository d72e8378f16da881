"""Field helpers every declared file is read with: YAML, keys, quantities, addresses, names.

One copy of each, so that every file (compose.yaml, policy.yaml, an inventory) reports
a mistake the same way: ConfigError(file, field, problem). ``f`` is the file as messages
show it (see `shown`), ``where`` the field's path in it (``services.web.x-labwarden``).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
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


def read_yaml(file: Path, f: str) -> dict:
    """The mapping in a YAML file; syntax errors become ConfigError(field='line N')."""
    try:
        doc = yaml.safe_load(Path(file).read_text())
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 1
        context = f"{e.context}: " if e.context else ""
        raise ConfigError(f, f"line {line}", f"invalid YAML: {context}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f, "line 1", f"invalid YAML: {e}") from None
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
    if value < 0:
        raise ConfigError(f, where, f"{raw!r} must not be negative")
    return value


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


def valid_ifname(name) -> bool:
    """A name the kernel accepts (dev_valid_name(): shorter than IFNAMSIZ, 16) made of
    characters that mean nothing in a command line or a ruleset (IFNAME_RULE)."""
    return isinstance(name, str) and _IFNAME.fullmatch(name) is not None
