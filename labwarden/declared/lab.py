"""A lab as written down: one call reads a lab folder into its topology (with its links)
and its policy (with its budgets). Nothing is started; see labwarden.realise for that."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from labwarden.declared.policy import Policy
from labwarden.declared.policy_file import load_policy
from labwarden.declared.topology import Resolver, Topology, load_topology


class DeclaredLab(NamedTuple):
    topology: Topology   # nodes, segments and impaired links, from compose.yaml
    policy: Policy       # the intent and latency budgets, from policy.yaml


def load_lab(name_or_path, policy=None, search=(Path("topologies"),), *,
             allow_unsafe_compose: bool = False, resolve: Resolver | None = None) -> DeclaredLab:
    """Read and check a lab folder (a path, or a lab's name looked up in search and among
    the repo's own labs): compose.yaml once, then policy.yaml (or the policy file given).
    Every mistake is a ConfigError naming file, field and problem; so is a compose file
    that reaches the host (labwarden.declared.compose_safety), unless allow_unsafe_compose.
    `resolve`: read compose.yaml as Compose does (see load_topology)."""
    topology = load_topology(name_or_path, search, allow_unsafe_compose, resolve)
    return DeclaredLab(topology, load_policy(topology, policy))
