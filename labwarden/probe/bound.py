"""Every agent call is bounded: how long one may take, and running it within that.

The bound is derived from the request itself: the agent runs a request's rounds one
after the other and, within a round, every node at once, so a call may take the sum
over rounds of its slowest node, plus `MARGIN_S` (60 s) for starting the agent (`docker exec`
or ssh, Python, the zipapp) on a loaded machine. A node costs what the agent may spend
on it (labwarden/agent/agent.py, timing.py): its setup, waiting for `start_at`, its
capture window, its probes (the batch's timeout after the last one left, then the
sniffer's catch-up: at most max(2, timeout) more), its fetches (connect, then read),
its latency samples and traceroutes, and, where the request sets a pace (`max_pps`),
the time its packets take at that pace.

A call over its bound is killed (the `docker exec` or ssh that carries it) and is a
ProbeError naming the transport, the nodes and the bound: a hung Docker daemon or host
ends the run with a message, not never.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from labwarden.errors import ProbeError

MARGIN_S = 60.0        # agent start (docker exec/ssh, python): 1-2 s measured, far more on a loaded machine
SETUP_S = 30.0         # a node's setup: the agent bounds each command it runs at 30 s
LOCAL_BACKENDS = ("docker", "ssh", "safe-ssh", "local")  # testinfra backends that run a local command
SHORT_S = 30.0         # a short command beside the agent (`nft --version` for the report)
TRACE_S = 10.0         # stopping `nft monitor trace` (the agent waits at most 10 s)


def node_seconds(item: dict, timeout: float, now: float | None = None) -> float:
    """The most the agent may spend on one node's part of a request."""
    seconds = SETUP_S if item.get("setup") else 0.0
    if item.get("start_at") is not None:
        seconds += max(0.0, float(item["start_at"]) - (time.time() if now is None else now))
    work = 0.0
    if item.get("probes"):
        work += timeout + max(2.0, timeout)
    fetches = item.get("fetch") or []
    if fetches:  # all at once: the slowest one
        work += max(timeout + float(f.get("read_s", timeout)) for f in fetches)
    for spec in item.get("latency") or []:
        count, interval, wait = (int(spec.get("count", 20)), float(spec.get("interval_s", 0.01)),
                                 float(spec.get("timeout_s", 3.0)))
        work += count * (interval + wait) if spec.get("serial") else count * interval + wait
    for spec in item.get("traceroute") or []:
        work += int(spec.get("queries", 3)) * float(spec.get("timeout_s", 3.0))
    seconds += max(work, float((item.get("capture") or {}).get("seconds", 0)))
    if item.get("trace"):
        seconds += TRACE_S
    return seconds


def pace_seconds(item: dict, max_pps: float | None) -> float:
    """The time a node's packets take at `max_pps` (none without a pace)."""
    if not max_pps:
        return 0.0
    return (len(item.get("probes") or []) + len(item.get("send") or [])) / float(max_pps)


def agent_bound(request: dict, now: float | None = None) -> float:
    """Seconds one agent call of `request` may take at most (see the module's doc)."""
    timeout = float(request.get("timeout", 1.0))
    pps = request.get("max_pps")
    rounds = request["rounds"] if "rounds" in request else [request]
    total = MARGIN_S
    for part in rounds:
        items = (part.get("nodes") or {}).values()
        total += max((node_seconds(i, timeout, now) + pace_seconds(i, pps) for i in items), default=0.0)
    return total


class _Bounded(threading.local):
    seconds: float | None = None
    stdin: bytes | None = None


_BOUND = _Bounded()
_RUNNING: dict[subprocess.Popen, bool] = {}  # the calls in flight (and whether each has its own group)


def _run_local(backend, command: str, *args: str):
    """testinfra's `run_local` with the calling thread's bound. The shell execs a remote
    backend's one command (`docker exec`, `ssh`), so killing the process at the bound kills
    the call itself, and it stays in this process group: a Ctrl-C at the terminal reaches it
    as before. A local:// command may be a whole shell line: it gets a process group of its
    own, killed whole."""
    local = backend.NAME == "local"
    cmd = backend.encode(("" if local else "exec ") + backend.quote(command, *args))
    proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, process_group=0 if local else None)
    _RUNNING[proc] = local
    try:
        stdout, stderr = proc.communicate(_BOUND.stdin, timeout=_BOUND.seconds)
    except BaseException:  # the bound passed, or an interrupt: nothing of it outlives the call
        _kill(proc, local)
        proc.wait()
        raise
    finally:
        _RUNNING.pop(proc, None)
    return backend.result(proc.returncode, cmd, stdout, stderr)


def _kill(proc: subprocess.Popen, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def stop_calls() -> None:
    """Kill every agent call in flight (on SIGTERM: the run is ending, their answers are not
    waited for)."""
    for proc, group in list(_RUNNING.items()):
        _kill(proc, group)


def run_bounded(host, seconds: float, what: str, command: str, *args: str, stdin: bytes | None = None):
    """`host.run(command, *args)` that takes at most `seconds`, else a ProbeError naming `what`.

    Live mode's own backends (labwarden.realise.ssh: TAKES_TIMEOUT) are handed the bound and
    stop the command themselves; testinfra's backends that run a local command (docker://,
    ssh://, local://) get it killed at the bound; any other is waited for in a thread that
    is abandoned at the bound.

    `stdin` is written to the command's standard input (a request of any size: one argument
    is limited to 128 KiB); docker:// then runs `docker exec -i`, the other backends that
    run a local command pass their stdin on (ssh does), live mode's backends take `stdin=`.
    A backend that can carry no stdin is refused with it."""
    backend = host.backend
    if getattr(backend, "TAKES_TIMEOUT", False):  # live mode's backends bound their own commands
        extra = {} if stdin is None else {"stdin": stdin}
        return host.run(command, *args, timeout=seconds, **extra)
    if stdin is not None and backend.NAME not in LOCAL_BACKENDS:
        raise ProbeError(f"{what}: testinfra's {backend.NAME}:// backend cannot carry a request on "
                         f"stdin (labwarden's are {', '.join(LOCAL_BACKENDS)} and live mode's)")
    if "run_local" not in vars(backend):  # once per backend: every thread's call reads its own bound
        backend.run_local = lambda command, *args: _run_local(backend, command, *args)
    _BOUND.seconds, _BOUND.stdin = seconds, stdin
    try:
        if backend.NAME == "docker" and stdin is not None:
            return _docker_exec_i(backend, command, *args)
        if backend.NAME in LOCAL_BACKENDS:
            return host.run(command, *args)
        return _in_thread(host, seconds, command, *args)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"the probe agent on {what} did not answer within {seconds:.0f} s (the bound "
                         "of its batch): the Docker engine or the host hangs") from None
    finally:
        _BOUND.seconds, _BOUND.stdin = None, None


def _docker_exec_i(backend, command: str, *args: str):
    """testinfra's DockerBackend.run with `-i`: the exec's stdin is the caller's."""
    cmd = backend.get_command(command, *args)
    user = ("-u", backend.user) if backend.user is not None else ()
    out = backend.run_local("docker exec -i" + " %s" * len(user) + " %s /bin/sh -c %s", *user, backend.name, cmd)
    out.command = backend.encode(cmd)
    return out


def _in_thread(host, seconds: float, command: str, *args: str):
    box: dict = {}

    def call():
        try:
            box["result"] = host.run(command, *args)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise subprocess.TimeoutExpired(command, seconds)
    if "error" in box:
        raise box["error"]
    return box["result"]
