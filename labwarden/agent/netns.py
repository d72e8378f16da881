"""Entering a node's network namespace, only while it still is that node's.

Standard library only. Used by the probe agent (agent.py), the delay line
(delayline.py) and `python3 agent.pyz enter ... -- COMMAND` (a command run in a
node's namespace, as `nsenter --net` would, but checked), all from the prober, which
shares the host's pid namespace and holds CAP_SYS_ADMIN.

A node's namespace is named by the pid of its container's first process, recorded when
the lab starts (`/proc/PID/ns/net`). If the container stops or restarts, that pid can
come back as any host process, and entering "its" namespace would put the prober in
the host's network (where loading a router's ruleset flushes the host's firewall). So
a node's spec names, beside the path, the container (`container`: its full id, as
Docker reports it) and, once the lab is plumbed, the namespace's inode
(`netns_inode`: the one entered then). Before setns(2):

- /proc/PID is opened once, and everything below is read through that descriptor: it
  stays bound to that one process, so a pid reused meanwhile fails the reads instead
  of answering for another process;
- the namespace is opened (pinned), then the process must still be in the container's
  cgroup (the container's id is a component of its /proc/PID/cgroup paths);
- the namespace's inode must be `netns_inode`, when given (a restarted container has a
  new namespace, without the lab's interfaces, routes and rules).

A spec with a path but no container is refused. Refusals say why, and nothing was
entered.
"""

import argparse
import ctypes
import os
import re
import sys

CLONE_NEWNET = 0x40000000
NETNS_PATH = re.compile(r"/proc/([1-9][0-9]*)/ns/net")
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class Refused(Exception):
    """The namespace is not entered: why, in one line (without the node's name)."""


def in_container(cgroup: str, container: str) -> bool:
    """Whether /proc/PID/cgroup's text puts the process in that container: its id is a whole
    path component (cgroupfs: .../docker/ID; systemd: .../docker-ID.scope), in any hierarchy."""
    for line in cgroup.splitlines():
        for part in line.split(":", 2)[-1].split("/"):
            if part == container or part.endswith(f"-{container}.scope"):
                return True
    return False


def open_checked(spec: dict) -> int | None:
    """A descriptor of the node's namespace, after the checks above; None when the spec has
    no namespace (a live lab: the agent already runs on the node)."""
    path = spec.get("netns")
    if not path:
        return None
    match = NETNS_PATH.fullmatch(str(path))
    if not match:
        raise Refused(f"refusing to enter {path!r}: not a /proc/PID/ns/net path")
    pid, container = match.group(1), spec.get("container")
    what = f"the network namespace of pid {pid}"
    if not container:
        raise Refused(f"refusing to enter {what}: the request names no container to check that pid "
                      "against (a pid alone may have been reused by any process)")
    if not CONTAINER_ID.fullmatch(str(container)):
        raise Refused(f"refusing to enter {what}: {container!r} is not a full container id (64 hex digits)")
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise Refused(f"cannot enter {what}: no such process (has the container stopped?); "
                      "nothing was entered") from None
    fd = None
    try:
        fd = os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        cgroup = _read(proc, "cgroup")
        if not in_container(cgroup, container):
            first = cgroup.splitlines()[0].split(":", 2)[-1] if cgroup else "none"
            raise Refused(f"refusing to enter {what}: that process is not in container {container[:12]} "
                          f"(its cgroup is {first}): the container stopped or restarted and the pid now "
                          "belongs to another process; nothing was entered")
        inode, expected = os.fstat(fd).st_ino, spec.get("netns_inode")
        if expected is not None and inode != int(expected):
            raise Refused(f"refusing to enter {what}: it is namespace {inode}, not {expected}, the one "
                          "plumbed at start (the container restarted: its interfaces, routes and rules "
                          "are gone); nothing was entered")
    except OSError as err:
        if fd is not None:
            os.close(fd)
        raise Refused(f"cannot enter {what}: {err.strerror} (the process ended meanwhile?); "
                      "nothing was entered") from None
    except Refused:
        os.close(fd)
        raise
    finally:
        os.close(proc)
    return fd


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd) as f:
        return f.read()


def enter(spec: dict) -> int | None:
    """Move the calling thread into the node's namespace (checked); the namespace's inode,
    or None when the spec has none."""
    fd = open_checked(spec)
    if fd is None:
        return None
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise Refused(f"setns into the network namespace of {spec['netns']} failed: "
                          f"{os.strerror(ctypes.get_errno())} (the prober needs --pid host and CAP_SYS_ADMIN)")
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """`enter --node NAME --netns PATH --container ID [--netns-inode N] -- COMMAND...`: run
    COMMAND in the node's namespace (exit 125 and a line on stderr when refused)."""
    parser = argparse.ArgumentParser(prog="agent.pyz enter")
    parser.add_argument("--node", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--netns-inode", type=int)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv[1:])
    try:
        enter({"netns": args.netns, "container": args.container, "netns_inode": args.netns_inode})
    except Refused as err:
        print(f"node {args.node}: {err}", file=sys.stderr)
        return 125
    try:
        os.execvp(args.command[0], args.command)
    except OSError as err:
        print(f"node {args.node}: cannot run {args.command[0]}: {err.strerror}", file=sys.stderr)
        return 127
