"""A lab's compose file read as Docker Compose reads it: `docker compose config`.

Compose fills in ${VARIABLES} (from the environment and the lab folder's .env), drops
services of profiles not enabled and merges what the file merges; labwarden must judge
the lab Compose will start, not the text. `--format yaml`, because the JSON output drops
the `x-labwarden` extension fields. labwarden.declared.topology reads the result
(`load_topology(..., resolve=resolver())`), so errors still name the user's file and field.

Where Compose v2 is not installed (a live lab's runner, say), `resolver()` is None: files
are then read as written, which gives the same lab for every file without variables or
profiles, and a ${VARIABLE} in a field labwarden reads is an error that says Compose is
needed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from labwarden.errors import ConfigError, LabError
from labwarden.realise.compose import compose_command

TIMEOUT_S = 60


def resolve(f: str, compose: Path) -> dict:
    """`docker compose config --format yaml` of the file, parsed; a ConfigError naming the
    file (as the user wrote it: `f`) with Compose's own words when Compose refuses it."""
    cmd = [*compose_command(), "--project-directory", str(compose.parent), "--file", str(compose),
           "config", "--format", "yaml"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f, "compose.yaml", f"`docker compose config` did not answer within {TIMEOUT_S} s") from None
    if proc.returncode != 0 or not proc.stdout.strip():  # v2.40 refuses some files with exit 0
        said = proc.stderr.strip().splitlines()
        raise ConfigError(f, "compose.yaml", "Docker Compose refuses it: "
                          + (said[-1] if said else f"`docker compose config` exit {proc.returncode}"))
    try:
        return yaml.safe_load(proc.stdout)
    except yaml.YAMLError as err:
        raise ConfigError(f, "compose.yaml", f"`docker compose config` gave YAML that does not parse: {err}") from None


def resolver():
    """`resolve` where Compose v2 is installed, else None (files are read as written)."""
    try:
        compose_command()
    except LabError:
        return None
    return resolve
