"""What a Compose lab leaves on this machine, named once, and how it is removed.

Every labwarden lab is a Compose project named `lw-<topology>-<6 hex>` (or
`lw-<topology>-kept`, kept with `--keep-lab`/`labwarden up`); its containers,
networks and volumes carry Docker's `com.docker.compose.project` label, and its
generated compose file (the prober) is `<project>.override.yaml` in labwarden's
private folder (realise/private.py). Runs of one topology take turns on
`topology-<topology>.lock` there.

Removing is idempotent: a project already gone, or removed meanwhile by another
run, is no error. `ComposeLab.down()` removes its own project; `labwarden down
--all` (`down_all`) removes every labwarden project, like Mininet's `mn -c`.
"""

import os
from pathlib import Path

import docker

from labwarden.declared.topology import Topology
from labwarden.errors import LabError
from labwarden.realise import private

PROJECT_PREFIX = "lw-"
OVERRIDE_SUFFIX = ".override.yaml"
PROJECT_LABEL = "com.docker.compose.project"


def docker_client():
    """The Docker engine's client, or a LabError that says how to get one."""
    try:
        return docker.from_env()
    except docker.errors.DockerException as err:
        where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
        raise LabError(f"cannot reach the Docker engine at {where} ({err}): start it "
                       "(`systemctl start docker`) or point DOCKER_HOST at a running one") from None


def kept_project(topology: Topology) -> str:
    """The project of a topology's kept lab (`--keep-lab`, `labwarden up`)."""
    return f"{PROJECT_PREFIX}{topology.name}-kept"


def topology_lock(name: str):
    """The lock file that runs of one topology take turns on (their subnets would clash)."""
    return private.open_lock(f"topology-{name}.lock", f"lock of topology {name}")


def override_file(project: str) -> Path:
    """The generated compose file (the prober) of a project: removed with the project."""
    return private.folder() / f"{project}{OVERRIDE_SUFFIX}"


def write_override(project: str, text: str) -> Path:
    return private.write(f"{project}{OVERRIDE_SUFFIX}", text, f"compose file of lab {project}")


def remove_project(client, project: str) -> None:
    """Remove a project's containers, networks, volumes and override file, whatever is left.

    What is already gone is no error; what Docker refuses to remove is tried to the end,
    then named in one LabError (a network another run's lab still uses, say)."""
    override_file(project).unlink(missing_ok=True)
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
    for network in client.api.networks(filters=label):
        remove("network", network.get("Name", network["Id"][:12]), client.api.remove_network, network["Id"])
    for volume in client.api.volumes(filters=label).get("Volumes") or []:  # e.g. a tunnel's keys
        remove("volume", volume["Name"], client.api.remove_volume, volume["Name"], force=True)
    if refused:
        raise LabError(f"lab {project}: Docker refused to remove " + "; ".join(refused))


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
