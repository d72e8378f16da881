"""What a Compose lab leaves on this machine, named once, and how it is removed.

Every labwarden lab is a Compose project named `lw-<topology>-<6 hex>` (or
`lw-<topology>-kept`, kept with `--lw-keep-lab`/`labwarden up`); its containers,
networks and volumes carry Docker's `com.docker.compose.project` label, and its
generated compose file (the prober) is `<project>.override.yaml` in labwarden's
private folder (realise/private.py). Labs whose subnets overlap take turns on their
address ranges (realise/ranges.py), claimed in that folder too.

Removing is idempotent: a project already gone, or removed meanwhile by another
run, is no error. It is not interrupted: Ctrl-C or SIGTERM arriving meanwhile waits
until everything is removed (`interrupts_deferred`), then takes effect.
`ComposeLab.down()` removes its own project; `labwarden down --all` (`down_all`)
removes every labwarden project, like Mininet's `mn -c`; `labwarden down --topology T
--stale` (`down_stale`) only T's labs that no live run holds: what a killed run of T
left, never a lab another run of T is using (that run holds T's lock). SIGTERM unwinds like
Ctrl-C in the CLI and the pytest plugin (`sigterm_interrupts`).
"""

import contextlib
import fcntl
import ipaddress
import os
import re
import signal
import threading
from pathlib import Path

import docker

from labwarden.declared.topology import Topology
from labwarden.errors import LabError
from labwarden.probe.bound import stop_calls
from labwarden.realise import private
from labwarden.realise.ranges import overlapping

PROJECT_PREFIX = "lw-"
OVERRIDE_SUFFIX = ".override.yaml"
PROJECT_LABEL = "com.docker.compose.project"
REMOVE_PASSES = 3  # a create that was in flight when its compose was killed may land after a pass


def docker_client():
    """The Docker engine's client, or a LabError that says how to get one."""
    try:
        return docker.from_env()
    except docker.errors.DockerException as err:
        where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
        raise LabError(f"cannot reach the Docker engine at {where} ({err}): start it "
                       "(`systemctl start docker`) or point DOCKER_HOST at a running one") from None


def kept_project(topology: Topology) -> str:
    """The project of a topology's kept lab (`--lw-keep-lab`, `labwarden up`)."""
    return f"{PROJECT_PREFIX}{topology.name}-kept"


def run_projects(topology: Topology, projects) -> list[str]:
    """The projects among `projects` that are runs of this topology (not its kept lab, nor
    a topology whose name merely starts with this one's: `lw-home-lab-…` is not `home`'s)."""
    own = re.compile(rf"{re.escape(PROJECT_PREFIX + topology.name)}-[0-9a-f]{{6}}")
    return sorted(p for p in projects if own.fullmatch(p))


def topology_lock(name: str):
    """The by-name lock every run of a topology holds while its lab lives (realise/ranges.py
    takes it beside the ranges claim, for one release): `down_stale` tells live from stale by it."""
    return private.open_lock(f"topology-{name}.lock", f"lock of topology {name}")


def override_file(project: str) -> Path:
    """The generated compose file (the prober) of a project: removed with the project."""
    return private.folder() / f"{project}{OVERRIDE_SUFFIX}"


def write_override(project: str, text: str) -> Path:
    return private.write(f"{project}{OVERRIDE_SUFFIX}", text, f"compose file of lab {project}")


def _on_sigterm(signum, frame):
    stop_calls()  # as a Ctrl-C at a terminal reaches the `docker exec`s too: no batch is waited for
    raise KeyboardInterrupt


def sigterm_interrupts() -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt: every lab started is removed on the
    way out), unless the program has a SIGTERM handler of its own."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def interrupts_deferred():
    """Run the block to its end whatever SIGINT/SIGTERM arrive meanwhile; afterwards the
    first of them is raised again, to its own handler (KeyboardInterrupt for Ctrl-C).
    Only the main thread receives signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def remove_project(client, project: str) -> None:
    """Remove a project's containers, networks, volumes and override file, whatever is left.

    What is already gone is no error; what Docker refuses to remove is tried to the end,
    then named in one LabError (a network another run's lab still uses, say). The project
    is listed again after each pass, until a listing finds nothing of it: what a killed
    `compose up` had in flight may be created after the first pass."""
    override_file(project).unlink(missing_ok=True)
    for _ in range(REMOVE_PASSES):
        if not _remove_pass(client, project):
            return


def _remove_pass(client, project: str) -> bool:
    """One pass over what is left of a project; whether there was anything."""
    label = {"label": f"{PROJECT_LABEL}={project}"}
    # containers that share another's network namespace (tunnel clients) go first: removing
    # the namespace's owner first left its endpoint behind on Docker 20.10, and the network
    # then could not be removed ("has active endpoints") until dockerd restarted
    containers = client.api.containers(all=True, filters=label)
    containers.sort(key=lambda c: not c.get("HostConfig", {}).get("NetworkMode", "").startswith("container:"))
    refused = []

    def remove(what: str, name: str, call, *args, **kw) -> None:
        try:
            call(*args, **kw)
        except docker.errors.NotFound:
            pass  # removed meanwhile (its compose down, or the namespace owner's removal)
        except docker.errors.APIError as err:
            refused.append(f"{what} {name}: {err.explanation or err}")

    for container in containers:
        name = (container.get("Names") or [container["Id"][:12]])[0].lstrip("/")
        remove("container", name, client.api.remove_container, container["Id"], force=True)
    networks = client.api.networks(filters=label)
    for network in networks:
        remove("network", network.get("Name", network["Id"][:12]), client.api.remove_network, network["Id"])
    volumes = client.api.volumes(filters=label).get("Volumes") or []
    for volume in volumes:  # e.g. a tunnel's keys
        remove("volume", volume["Name"], client.api.remove_volume, volume["Name"], force=True)
    if refused:
        raise LabError(f"lab {project}: Docker refused to remove " + "; ".join(refused))
    return bool(containers or networks or volumes)


def labwarden_projects(client) -> set[str]:
    """The labwarden projects that have a container or a network on this engine."""
    projects = set()
    # the low-level lists: the high-level ones inspect each object, and fail on one that
    # another run removes meanwhile
    for container in client.api.containers(all=True, filters={"label": PROJECT_LABEL}):
        projects.add(container["Labels"][PROJECT_LABEL])
    for network in client.api.networks(filters={"label": PROJECT_LABEL}):
        projects.add(network["Labels"][PROJECT_LABEL])
    return {p for p in projects if p.startswith(PROJECT_PREFIX)}


def projects_on(client, ranges) -> set[str]:
    """The labwarden projects with a network on any of these ranges (Docker would refuse ours)."""
    found = set()
    for network in client.api.networks(filters={"label": PROJECT_LABEL}):
        project = (network.get("Labels") or {}).get(PROJECT_LABEL, "")
        subnets = [ipaddress.ip_network(c["Subnet"], strict=False)
                   for c in (network.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
        if project.startswith(PROJECT_PREFIX) and overlapping(ranges, subnets):
            found.add(project)
    return found


def down_all() -> list[str]:
    """Remove every labwarden lab on this Docker engine, and the override files of labs
    that crashed before starting (`labwarden down --all`); the projects removed."""
    client = docker_client()
    projects = sorted(labwarden_projects(client))
    refused = []
    for project in projects:
        try:
            remove_project(client, project)
        except LabError as err:  # the others are removed all the same
            refused.append(str(err))
    for stale in private.folder().glob(f"{PROJECT_PREFIX}*{OVERRIDE_SUFFIX}"):
        stale.unlink(missing_ok=True)
    if refused:
        raise LabError("; ".join(refused))
    return projects


def down_stale(topology: Topology) -> list[str] | None:
    """Remove this topology's run labs that no live run holds (left by a killed run); the
    projects removed, or None when a run of the topology is live (its lock is held): then
    nothing is removed, since that run's lab is in use. The kept lab is never touched."""
    client = docker_client()
    with topology_lock(topology.name) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        stale = run_projects(topology, labwarden_projects(client))
        for project in stale:  # a new run of it waits on the lock meanwhile
            remove_project(client, project)
    return stale
