"""The nftables router kind: `nft -f` loads a config, `nft monitor trace` tells the deciding rule.

model.py is the grammar and meaning of the rulesets the rule fuzzer draws (its constants are
what the fuzzer aims at); trace.py reads a trace back to the config's lines.
"""

from labwarden.routers import RouterKind
from labwarden.routers.nftables.trace import trace_ruleset, untrace_ruleset


class Nftables(RouterKind):
    name, tool = "nftables", "nft"
    version_command = "nft --version"
    can_trace = True

    def load(self, text: str, path=None) -> dict:
        return {"nft": text}  # the agent flushes the ruleset in the same transaction

    def trace_setup(self, addresses) -> dict:
        return {"nft_add": trace_ruleset(addresses)}

    def untrace_setup(self) -> dict:
        return {"nft_add": untrace_ruleset()}


KIND = Nftables()
