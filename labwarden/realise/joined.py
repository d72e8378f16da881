"""One lab shared by the processes of one run (pytest-xdist's workers): the first brings it
up, the others join it, the last one out takes it down.

The documented xdist pattern for a fixture that must run once: a folder every worker of the
run shares (`tmp_path_factory.getbasetemp().parent`) and a lock file in it. Here:

- `lab.lock` (exclusive flock, held while a lab is brought up or given up) guards `lab.pickle`,
  what the owner wrote of its running lab: the project, the image, each node's plumbed
  process (`pid_start`, so a joiner's agent refuses a restarted container as the owner's
  does), the impairment and the timings;
- `lab.users`: every process on the lab holds a shared flock on it for as long as it uses it;
  the owner, done, lets its own go and waits for an exclusive one (every other process done,
  or dead: the kernel drops a killed process's flock), then removes `lab.pickle` and takes the
  lab down. A process that comes after that brings the lab up again (it owns it then).

A joiner never plumbs, restarts or reloads anything: the lab is running the others' probes
(`ComposeLab(attach=...)` would make it fresh, which would cut them). It holds no address
ranges either: the owner holds them for the lab (realise/ranges.py). Ctrl-C or SIGTERM in the
owner while it waits: it takes the lab down at once (the others are interrupted too, or
fail naming the vanished containers).

The workers take turns on the lab's wires (`lab.turns`, `Turns`): one process's agent calls
(their captures included) go while no other's do, or a capture would count another worker's
packets as the segment's (a snooping check saw another worker's no-leak probes to an
outside address). Calls within one process overlap, as in a serial run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

from labwarden.realise.compose import ComposeLab
from labwarden.realise.lab import Lab

STATE = "lab.pickle"
GUARD = "lab.lock"
USERS = "lab.users"
TURNS = "lab.turns"
POLL_S = 0.2


class JoinedLab(ComposeLab):
    """A running lab that another process of this run brought up: found, never changed;
    down() leaves it running."""

    def __init__(self, topology, policy, state: dict, **kwargs):
        super().__init__(topology, policy, attach=state["project"], **kwargs)
        self._state = state

    def up(self) -> "JoinedLab":
        started = time.monotonic()
        self.image = self._state["image"]
        self.impairment = self._state["impairment"]
        self._find_containers(resting=frozenset(self._state.get("resting", ())))
        self.transports = {n: dataclasses.replace(t, pid_start=self._state["pid_start"].get(n))
                           for n, t in self.transports.items()}
        self.timings = {**self._state["timings"], "join_s": time.monotonic() - started}
        return self


def state_of(lab: Lab) -> dict:
    """What a joiner needs of the owner's running lab (a ComposeLab)."""
    return {"project": lab.project, "image": lab.image, "impairment": lab.impairment,
            "timings": dict(lab.timings),
            "pid_start": {n: t.pid_start for n, t in lab.transports.items()},
            "resting": sorted(s for s, c in lab.containers.items() if c.status != "running")}


class Turns:
    """An exclusive flock on `path` while any agent call of this process runs (counted: calls
    of one process overlap, as in a serial run; another process's wait)."""

    def __init__(self, path: Path):
        self.path = path
        self._mutex = threading.Lock()
        self._held = None
        self._calls = 0

    def take(self) -> None:
        with self._mutex:
            if self._calls == 0:
                held = open(self.path, "a")
                fcntl.flock(held, fcntl.LOCK_EX)
                self._held = held
            self._calls += 1

    def give(self) -> None:
        with self._mutex:
            self._calls -= 1
            if self._calls == 0:
                self._held.close()  # closing drops the flock
                self._held = None

    def around(self, lab: Lab) -> Lab:
        """The lab, its agent calls (`run`, `run_rounds`) taking turns with the other processes'."""
        lab.run, lab.run_rounds = self._in_turn(lab.run), self._in_turn(lab.run_rounds)
        return lab

    def _in_turn(self, call):
        async def in_turn(*args, **kwargs):
            await asyncio.to_thread(self.take)
            try:
                return await call(*args, **kwargs)
            finally:
                self.give()
        return in_turn


class Shared:
    """The run's lab, in `folder`: `enter(start, join)` returns the running lab (brought up by
    `start()` when nobody runs one, else `join(state)`), `leave()` gives it back."""

    def __init__(self, folder: Path, log: Callable[[str], None] = lambda line: None):
        self.folder = Path(folder)
        self.log = log
        self.owner = False
        self._users = None

    @contextlib.contextmanager
    def _guard(self):
        with open(self.folder / GUARD, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
            yield

    def enter(self, start: Callable[[], Lab], join: Callable[[dict], Lab]) -> Lab:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._guard():
            users = open(self.folder / USERS, "a")
            try:
                fcntl.flock(users, fcntl.LOCK_SH)  # never waits: an exclusive one is only tried (leave)
                state = self._read()
                if state is None:
                    lab, self.owner = start(), True  # it undoes itself when it fails
                    try:
                        self._write(state_of(lab))
                    except BaseException:
                        lab.down()
                        raise
                else:
                    self.log(f"labwarden: joining lab {state['project']}, which another worker of this run brought up")
                    lab = join(state)
            except BaseException:
                users.close()
                raise
            self._users = users
            return lab

    def in_turns(self, lab: Lab) -> Lab:
        """The lab, its agent calls taking turns with the other workers' (`Turns`)."""
        return Turns(self.folder / TURNS).around(lab)

    def leave(self, lab: Lab) -> None:
        """A joiner lets go; the owner waits for every other process to let go, then takes
        the lab down (at once when interrupted)."""
        users, self._users = self._users, None
        try:
            if not self.owner:
                return
            fcntl.flock(users, fcntl.LOCK_UN)
            said = False
            while True:
                with self._guard():
                    try:
                        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass
                    else:
                        (self.folder / STATE).unlink(missing_ok=True)
                        break
                if not said:
                    self.log(f"labwarden: lab {lab.project}: waiting for the other workers to finish with it")
                    said = True
                time.sleep(POLL_S)
        finally:
            try:
                if self.owner:
                    with contextlib.suppress(OSError):
                        (self.folder / STATE).unlink(missing_ok=True)  # interrupted: nobody joins it now
                    if not lab.keep:  # --lw-keep-lab: left running, as a serial run leaves it
                        lab.down()
            finally:
                if users is not None:
                    users.close()

    def _read(self) -> dict | None:
        try:
            return pickle.loads((self.folder / STATE).read_bytes())  # our own run's file, in its own tmp folder
        except FileNotFoundError:
            return None

    def _write(self, state: dict) -> None:
        tmp = self.folder / f".{STATE}.{os.getpid()}"
        tmp.write_bytes(pickle.dumps(state))
        os.replace(tmp, self.folder / STATE)
