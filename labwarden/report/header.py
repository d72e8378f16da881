"""A report's header: what was tested, with what, when (paths, sha256, versions)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from labwarden import __version__
from labwarden.declared.fields import shown


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tool_version(command: str, run: Callable[[str], str] | None = None) -> str | None:
    """A router tool's version (`nft --version`, the kind's version_command) where the router's
    rules are loaded from (run), else on this machine."""
    try:
        out = run(command) if run else subprocess.run(
            command.split(), capture_output=True, text=True, timeout=10).stdout
    except Exception:  # a version string is decoration: never fail a run for it
        return None
    return out.strip() or None


def header(topology=None, policy=None, router_config: Path | None = None, **extra) -> dict:
    """The run's header: what was tested, with what, when."""
    head = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"labwarden": __version__, "python": platform.python_version()}}
    if topology is not None:
        head["topology"] = topology.name
        head["topology_path"] = shown(topology.path)
    if policy is not None:
        head["policy"] = shown(policy.file)
    if router_config is not None and Path(router_config).is_file():
        head["router_config"] = shown(router_config)
        head["router_config_sha256"] = sha256_of(router_config)
    head.update(extra)
    return head
