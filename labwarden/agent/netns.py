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
Docker reports it) and, once the lab is plumbed, the process's start time (`pid_start`:
clock ticks after boot, /proc/PID/stat's 22nd field, as read then). Before setns(2):

- /proc/PID is opened once, and everything below is read through that descriptor: it
  stays bound to that one process, so a pid reused meanwhile fails the reads instead
  of answering for another process;
- the process must be in the container's cgroup (the container's id is a component of
  its /proc/PID/cgroup paths): a host process, or another container's, is refused;
- it must have started when the one plumbed did, when `pid_start` is given: a pid
  reused inside a restarted container is refused too (its namespace is a new one,
  without the lab's interfaces, routes and rules). The namespace's inode would not
  tell: the kernel hands a freed namespace's inode number to the next one (seen on a
  container restart).

A spec with a path but no container is refused. Refusals say why, and nothing was
entered.
"""

import argparse
import ctypes
import errno
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


def open_checked(spec: dict) -> tuple[int, int] | None:
    """A descriptor of the node's namespace and its process's start time, after the checks
    above; None when the spec has no namespace (a live lab: the agent runs on the node)."""
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
    try:
        cgroup = _read(proc, "cgroup")
        if not in_container(cgroup, container):
            first = cgroup.splitlines()[0].split(":", 2)[-1] if cgroup else "none"
            raise Refused(f"refusing to enter {what}: that process is not in container {container[:12]} "
                          f"(its cgroup is {first}): the container stopped or restarted and the pid now "
                          "belongs to another process; nothing was entered")
        started, expected = start_time(_read(proc, "stat")), spec.get("pid_start")
        if expected is not None and started != int(expected):
            raise Refused(f"refusing to enter {what}: that process started {started} ticks after boot, not "
                          f"{expected} as the one plumbed at start (the container restarted: its interfaces, "
                          "routes and rules are gone); nothing was entered")
        return os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), started
    except OSError as err:
        gone = err.errno in (errno.ESRCH, errno.ENOENT)
        raise Refused(f"cannot enter {what}: {err.strerror}{' (the process ended meanwhile)' if gone else ''}; "
                      "nothing was entered") from None
    finally:
        os.close(proc)


def start_time(stat: str) -> int:
    """A process's start (clock ticks after boot) from /proc/PID/stat: its 22nd field, counted
    after the command name, which may hold spaces and parentheses."""
    return int(stat.rpartition(")")[2].split()[19])


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd) as f:
        return f.read()


def enter(spec: dict) -> int | None:
    """Move the calling thread into the node's namespace (checked); its process's start time
    (to send back as `pid_start`), or None when the spec has no namespace."""
    opened = open_checked(spec)
    if opened is None:
        return None
    fd, started = opened
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise Refused(f"setns into the network namespace of {spec['netns']} failed: "
                          f"{os.strerror(ctypes.get_errno())} (the prober needs --pid host and CAP_SYS_ADMIN)")
        return started
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """`enter --node NAME --netns PATH --container ID [--pid-start N] -- COMMAND...`: run
    COMMAND in the node's namespace (exit 125 and a line on stderr when refused)."""
    parser = argparse.ArgumentParser(prog="agent.pyz enter")
    parser.add_argument("--node", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--pid-start", type=int)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv[1:])
    try:
        enter({"netns": args.netns, "container": args.container, "pid_start": args.pid_start})
    except Refused as err:
        print(f"node {args.node}: {err}", file=sys.stderr)
        return 125
    try:
        os.execvp(args.command[0], args.command)
    except OSError as err:
        print(f"node {args.node}: cannot run {args.command[0]}: {err.strerror}", file=sys.stderr)
        return 127
