"""The iptables router kind: `iptables-restore` files, loaded with the real iptables tools.

The iptables-persistent convention: `rules.v4` for iptables-restore and, beside it,
`rules.v6` for ip6tables-restore (any `NAME.v4` with its `NAME.v6`). A v4 file without
its v6 sibling loads nothing for IPv6: on a dual-stack lab its router then forwards every
IPv6 packet (the hole is real, and the suites judge it); the report header says so.

Debian's `iptables` is iptables-nft: its tables are nftables tables (`table ip filter`,
`table ip6 filter`, ...), so the agent empties the whole nft ruleset first, then
`iptables-restore` (and `ip6tables-restore`) commit every table of their file, then reads
them back (`iptables-save`, `ip6tables-save`, `nft list tables`). Not iptables-legacy: its
tables live beside nftables, where neither the flush nor the read-back sees them (and a
kernel built without it, or without its modules in a container, has none). No trace: the
deciding rule is not told for this kind (reports say so).
"""

from pathlib import Path

from labwarden.routers import RouterKind


def sibling_v6(path: Path | None) -> Path | None:
    """`NAME.v6` beside a `NAME.v4` file, if there is one."""
    if path is None or Path(path).suffix != ".v4":
        return None
    v6 = Path(path).with_suffix(".v6")
    return v6 if v6.is_file() else None


class Iptables(RouterKind):
    name = tool = "iptables"
    version_command = "iptables --version"

    def load(self, text: str, path: Path | None = None) -> dict:
        v6 = sibling_v6(path)
        return {"iptables": text, **({"ip6tables": v6.read_text()} if v6 else {})}

    def header(self, config: Path | None = None, dual_stack: bool = False) -> dict:
        fields = super().header(config, dual_stack)
        if dual_stack:
            v6 = sibling_v6(config)
            fields["router_ipv6"] = (f"ip6tables-restore {v6.name}" if v6 else
                                     f"not filtered: no {Path(config).stem if config else 'rules'}.v6 beside "
                                     f"{Path(config).name if config else 'the v4 file'}, so nothing is loaded "
                                     "for IPv6 and the router forwards every IPv6 packet")
        return fields


KIND = Iptables()
