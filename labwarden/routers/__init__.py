"""Router kinds: how a lab router loads its firewall config, reads it back, and says its version.

A kind is named on the router's service (``x-labwarden: {router_kind: iptables}``) or
detected from the config file's content (`detect`). KINDS maps each name to where its
RouterKind lives, imported when first asked for (as testinfra's BACKENDS). To add a kind:
a module with a `KIND`, a line in KINDS, and its name in
labwarden.declared.topology.ROUTER_KINDS (the names a topology may write; declared/ cannot
look up here).

A kind knows how to replace the router's whole ruleset with a file in one agent setup
(`load`), the command that prints its tool's version, and whether it can tell which rule
decided a flow (`can_trace`, with the setups that start and stop a trace). The connection
tracking table is emptied by the generic `flush_conntrack` setup key, whatever the kind.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from labwarden.errors import LabwardenError

KINDS = {"nftables": "labwarden.routers.nftables:KIND",
         "iptables": "labwarden.routers.iptables:KIND"}

# an iptables-restore file: `*filter`, `*nat`, ... table lines, each closed by COMMIT
_IPTABLES_TABLE = re.compile(r"^\*(filter|nat|mangle|raw|security)\s*$", re.M)
_COMMIT = re.compile(r"^COMMIT\s*$", re.M)


class RouterKind:
    """What labwarden needs of a router's firewall tool; a kind overrides what differs."""
    name = ""
    tool = ""                # the version's name in the report header
    version_command = ""     # run on the router's transport host
    can_trace = False        # whether the deciding rule of a flow can be traced

    def load(self, text: str, path: Path | None = None) -> dict:
        """Agent setup keys that replace the router's whole ruleset with `text` atomically and
        read it back (the node fails, naming what differs). `path`: the file `text` came from,
        for a kind whose config has companions beside it (iptables' rules.v6)."""
        raise NotImplementedError

    def trace_setup(self, addresses) -> dict:
        """Setup keys that mark packets from or to these addresses for tracing."""
        raise LabwardenError(f"a router of kind {self.name} cannot trace which rule decided a flow")

    def untrace_setup(self) -> dict:
        raise LabwardenError(f"a router of kind {self.name} cannot trace which rule decided a flow")

    def header(self, config: Path | None = None, dual_stack: bool = False) -> dict:
        """What a report's header says of this kind: its name, and (said, not left to guess)
        when failures cannot name the rule that decided. `config`: the router's file;
        `dual_stack`: whether the lab has IPv6."""
        fields = {"router_kind": self.name}
        if not self.can_trace:
            fields["router_trace"] = f"not traced: a router of kind {self.name} cannot tell which rule decided"
        return fields

    def __repr__(self) -> str:
        return f"<router kind {self.name}>"


def kind(name: str) -> RouterKind:
    """The kind called `name`; an unknown name lists the known ones."""
    if name not in KINDS:
        raise LabwardenError(f"unknown router kind {name!r}; known kinds: {', '.join(KINDS)}")
    module, _, attr = KINDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def detect(text: str) -> RouterKind:
    """iptables for an iptables-restore file (`*TABLE` lines and COMMIT), else nftables."""
    if _IPTABLES_TABLE.search(text) and _COMMIT.search(text):
        return kind("iptables")
    return kind("nftables")


def of_router(node, config: Path | None, declared: bool = True) -> RouterKind:
    """The kind of a router loading `config`: the one declared on its node (`declared`: the
    config is the node's own), else the one the config's content says."""
    if declared and node.router_kind:
        return kind(node.router_kind)
    return detect(Path(config).read_text()) if config else kind("nftables")
