"""The iptables router kind: an `iptables-restore` file, loaded with the real iptables tools.

Debian's `iptables` is iptables-nft: its tables are nftables tables (`table ip filter`, ...),
so the agent empties the whole nft ruleset first, then `iptables-restore` commits every table
of the file in one transaction, then reads it back (`iptables-save`, `nft list tables`).
Not iptables-legacy: its tables live beside nftables, where neither the flush nor the
read-back sees them (and a kernel built without it, or without its modules in a container,
has none). No trace: the deciding rule is not told for this kind (reports say so).
"""

from labwarden.routers import RouterKind


class Iptables(RouterKind):
    name = tool = "iptables"
    version_command = "iptables --version"

    def load(self, text: str) -> dict:
        return {"iptables": text}


KIND = Iptables()
