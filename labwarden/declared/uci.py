"""Reading OpenWrt's UCI configuration files (/etc/config/network, /etc/config/firewall).

    config rule 'name'          a section: its type and, optionally, its name
        option key 'value'      one value (a later one replaces it, as uci does)
        list key 'value'        one more value of a list

Values are quoted as a shell quotes them ('...', "...", bare words, adjacent pieces
joined); `#` starts a comment outside quotes; `package NAME` lines are accepted and
ignored. A section without a name is anonymous and is labelled as uci labels it,
`@rule[3]` (its index among the sections of its type). Sections of one name given twice
are merged, as uci merges them. Anything else is one ConfigError naming the file, the
line and the problem. Only parsing lives here: what the sections mean to labwarden is
labwarden.declared.openwrt's.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from labwarden.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Section:
    type: str
    name: str | None              # None: anonymous
    index: int                    # among the sections of its type, from 0
    line: int                     # where its `config` line is
    options: dict[str, str | list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How uci names it: `lan` for a named section, `@zone[1]` for an anonymous one."""
        return self.name if self.name is not None else f"@{self.type}[{self.index}]"

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.options.get(key, default)
        return " ".join(value) if isinstance(value, list) else value

    def values(self, key: str) -> list[str]:
        """A list option's values, or an option's words (`option proto 'tcp udp'` as fw4 reads it)."""
        value = self.options.get(key)
        if value is None:
            return []
        return [w for v in value for w in v.split()] if isinstance(value, list) else value.split()

    @property
    def enabled(self) -> bool:
        """False for `option enabled '0'` (also 'no', 'off', 'false'), as uci's boolean reads it."""
        return (self.get("enabled") or "1").lower() not in ("0", "no", "off", "false", "disabled")


@dataclass
class UciFile:
    path: str
    sections: list[Section]

    def of_type(self, type_: str) -> list[Section]:
        return [s for s in self.sections if s.type == type_]

    def named(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def where(self, section: Section) -> str:
        return f"{self.path}:{section.line}"


def parse_uci(text: str, path: str) -> UciFile:
    """Parse one UCI file's text; `path` is how errors name it."""
    sections: list[Section] = []
    counts: dict[str, int] = {}
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        def fail(problem, number=number):
            raise ConfigError(path, f"line {number}", problem)
        try:
            words = shlex.split(raw, comments=True, posix=True)
        except ValueError as err:  # No closing quotation, No escaped character
            fail(f"{str(err).lower()}: {raw.strip()!r}")
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "package":
            if len(args) != 1:
                fail("'package' takes one name")
            continue
        if keyword == "config":
            if not 1 <= len(args) <= 2:
                fail("'config' takes a section type and at most one name, e.g. config rule 'Allow-SSH'")
            for word in args:
                if not _NAME.match(word):
                    fail(f"{word!r} is not a section type or name (letters, digits, '_' and '-')")
            type_, name = args[0], (args[1] if len(args) == 2 else None)
            old = next((s for s in sections if name is not None and s.name == name), None)
            if old is not None:
                if old.type != type_:
                    fail(f"section {name!r} is already a {old.type} (line {old.line})")
                current = old
                continue
            current = Section(type_, name, counts.get(type_, 0), number)
            counts[type_] = current.index + 1
            sections.append(current)
            continue
        if keyword in ("option", "list"):
            if current is None:
                fail(f"'{keyword}' before any 'config' line: it belongs to no section")
            if len(args) != 2:
                fail(f"'{keyword}' takes a name and one value, e.g. {keyword} proto 'tcp' "
                     f"(got {len(args)} word{'s' if len(args) != 1 else ''}; quote a value with spaces)")
            key, value = args
            if not _NAME.match(key):
                fail(f"{key!r} is not an option name (letters, digits, '_' and '-')")
            have = current.options.get(key)
            if keyword == "option":
                if isinstance(have, list):
                    fail(f"{key!r} is already a list in section {current.label}: use 'list {key}'")
                current.options[key] = value
            else:
                if isinstance(have, str):
                    fail(f"{key!r} is already an option in section {current.label}: use 'option {key}'")
                current.options.setdefault(key, []).append(value)
            continue
        fail(f"unknown keyword {keyword!r}: a UCI line starts with config, option, list or package")
    return UciFile(path, sections)
