"""Labs whose address ranges overlap take turns on this machine; disjoint ones run at once.

Docker refuses a network whose subnet overlaps another's ("Pool overlaps"), whatever the
labs are called: a mutant lab folder has its lab's subnets under another name, and two
copies of a topology have the same. So the lock a lab holds while it runs is keyed by the
ranges it uses (its segments' subnets), not by its name.

How, in labwarden's private folder (realise/private.py):

- each running lab holds `ranges-<label>-<token>.lock`, which lists its ranges, under an
  exclusive flock(2) for as long as it runs (the kernel drops it when the process dies,
  SIGKILL too, so a crashed run never blocks anyone: its file is stale and removed);
- a run that wants ranges takes `ranges.lock` (held for milliseconds), reads every live
  holder's ranges, and makes its own file only when none overlaps; otherwise it lets go
  and looks again (`wait_s`), naming the holder in what it logs and in the error when it
  gives up.

The holders' files are read and written through the private folder only (O_NOFOLLOW, never
truncated through a link).

For one release a lab also holds `topology-<name>.lock`, the lock labwarden keyed by name
before: a run of an older labwarden on this machine takes only that one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from labwarden.errors import LabError
from labwarden.realise import private

GUARD = "ranges.lock"
PREFIX = "ranges-"
POLL_S = 0.5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def overlapping(mine: Iterable[Network], theirs: Iterable[Network]) -> list[tuple[Network, Network]]:
    """Every pair (mine, theirs) that shares an address (IPv4 never overlaps IPv6)."""
    theirs = list(theirs)
    return [(a, b) for a in mine for b in theirs if a.version == b.version and a.overlaps(b)]


@dataclass(frozen=True)
class Holder:
    """A running lab's claim, as its file says."""
    label: str
    ranges: tuple[Network, ...]

    def text(self) -> str:
        return "".join(f"{line}\n" for line in (self.label, *map(str, self.ranges)))

    @classmethod
    def parse(cls, text: str) -> "Holder":
        label, *lines = text.splitlines() or [""]
        return cls(label, tuple(ipaddress.ip_network(line, strict=False) for line in lines if line))


def _file_name(label: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60]
    return f"{PREFIX}{safe}-{secrets.token_hex(4)}.lock"


class RangesLock:
    """The ranges of one lab, held from `acquire()` until `release()` (or the process ends).

        with RangesLock(topology.lab_ranges(), "lab lw-homelab-1a2b3c") as lock: ...
    """

    def __init__(self, ranges: Iterable[Network], label: str, topology: str | None = None):
        self.ranges = tuple(ranges)
        self.label = label
        self.topology = topology  # also held by name, as older labwarden runs key it
        self._file = None
        self._name = None
        self._by_name = None

    def acquire(self, wait_s: float, log: Callable[[str], None] = lambda line: None) -> None:
        """Claim the ranges, waiting up to `wait_s` for overlapping labs to end; a LabError
        naming them when they have not."""
        deadline = time.monotonic() + wait_s
        said = None
        while True:
            clash = self._try()
            if not clash:
                return
            who = "; ".join(h.label + (f" ({', '.join(str(b) if a == b else f'{b} overlaps {a}' for a, b in pairs)})"
                                       if pairs else "") for h, pairs in clash)
            if time.monotonic() >= deadline:
                raise LabError(f"{self.label}: its address ranges are still in use after {wait_s:.0f} s by "
                               f"{who}; Docker cannot hold overlapping subnets at once: wait for that "
                               "run to end (or give this lab other subnets)")
            if who != said:
                log(f"labwarden: {self.label}: waiting for {who}")
                said = who
            time.sleep(POLL_S)

    def _try(self) -> list[tuple[Holder, list]]:
        """Under the guard: the live holders whose ranges overlap ours, or [] and ours is claimed."""
        if self.topology is not None and self._by_name is None:
            by_name = private.open_lock(f"topology-{self.topology}.lock", f"lock of topology {self.topology}")
            try:
                fcntl.flock(by_name, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                by_name.close()
                return [(Holder(f"a run of topology {self.topology}", ()), [])]
            self._by_name = by_name
        with private.open_lock(GUARD, "lock of the labs' address ranges") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            clash = [(h, pairs) for h in live_holders() if (pairs := overlapping(self.ranges, h.ranges))]
            if clash:
                return clash
            name = _file_name(self.label)
            claim = private.open_lock(name, f"claim of {self.label}'s address ranges")
            try:
                fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
                claim.write(Holder(self.label, self.ranges).text())
                claim.flush()
            except BaseException:
                _unlink(name)
                claim.close()
                raise
            self._file, self._name = claim, name
            return []

    def release(self) -> None:
        """Give the ranges back; safe to call twice."""
        if self._file is not None:
            _unlink(self._name)   # before letting go: nobody mistakes a live file for a stale one
            self._file.close()    # closing releases the flock
            self._file = self._name = None
        if self._by_name is not None:
            self._by_name.close()
            self._by_name = None

    def __enter__(self) -> "RangesLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def live_holders() -> list[Holder]:
    """The claims of running labs; the files of runs that ended without releasing theirs (a
    killed process) are removed. Call it under the guard."""
    found = []
    for path in sorted(private.folder().glob(f"{PREFIX}*.lock")):
        try:
            claim = private.open_lock(path.name, "claim of a lab's address ranges")
        except LabError:
            continue  # removed meanwhile by its holder, or not a file of ours: not a claim
        with claim:
            try:
                fcntl.flock(claim, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # its holder runs
                try:
                    found.append(Holder.parse(claim.read()))
                except ValueError:
                    continue  # being written: cannot happen under the guard, and no claim to honour
                continue
            _unlink(path.name)  # nobody holds it: its run ended without releasing it
    return found


def _unlink(name: str) -> None:
    try:
        os.unlink(private.folder() / name)
    except FileNotFoundError:
        pass
