"""One pace per live host for the whole run: at most `per_s` packets in any one second.

A bucket of `per_s` tokens per host. A batch of n packets (probes, raw sends, fetches,
latency samples, traceroute probes) takes n tokens from its host's bucket before it is
sent, waiting until they are there; it gives them back one second after its agent call
*ended*. So every packet a batch sends (they go out between the call's start and end)
lies in a second in which no more than `per_s` tokens were out, whatever the calls'
overlap: the promise holds across calls, checks, suites and threads. A batch larger than
the bucket waits for a full bucket and takes it all (LiveLab splits batches, so only one
indivisible item -- a latency spec of more samples than `per_s` -- can do that; it paces
its own samples).

Calls that need several hosts take their tokens from all buckets at once or from none
(no deadlock between calls). `peak()` is the most tokens taken within any one second:
the achieved peak rate the report shows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

WINDOW_S = 1.0
POLL_S = 0.02   # how often a waiting batch looks again while tokens are out with running calls


class Ticket:
    def __init__(self, taken: dict[str, int]):
        self.taken = taken
        self.back_at: float | None = None    # None while its call runs


class Pace:
    def __init__(self, per_s: int, clock: Callable[[], float] = time.monotonic, sleep=asyncio.sleep):
        self.per_s, self.clock, self.sleep = per_s, clock, sleep
        self._lock = threading.Lock()
        self._out: list[Ticket] = []
        self._log: dict[str, list[tuple[float, int]]] = {}   # host -> [(taken at, n)]

    def _in_use(self, host: str, now: float) -> int:
        return sum(t.taken.get(host, 0) for t in self._out if t.back_at is None or t.back_at > now)

    def try_take(self, need: dict[str, int]) -> tuple[Ticket | None, float]:
        """(a ticket, 0) when every host has its tokens now; else (None, seconds to wait)."""
        need = {h: n for h, n in need.items() if n > 0}
        with self._lock:
            now = self.clock()
            self._out = [t for t in self._out if t.back_at is None or t.back_at > now]
            short = [h for h, n in need.items() if self.per_s - self._in_use(h, now) < min(n, self.per_s)]
            if short:
                mine = [t for t in self._out if any(t.taken.get(h) for h in short)]
                running = any(t.back_at is None for t in mine)
                due = [t.back_at - now for t in mine if t.back_at is not None]
                return None, min(due + [POLL_S] * running or [POLL_S])
            ticket = Ticket(need)
            self._out.append(ticket)
            for host, n in need.items():
                self._log.setdefault(host, []).append((now, n))
            return ticket, 0.0

    async def take(self, need: dict[str, int]) -> Ticket:
        """A ticket for these packets per host, once every host's bucket holds them."""
        while True:
            ticket, wait = self.try_take(need)
            if ticket is not None:
                return ticket
            await self.sleep(max(wait, 0.001))

    def give_back(self, ticket: Ticket) -> None:
        """The call ended: its tokens come back one second from now."""
        with self._lock:
            ticket.back_at = self.clock() + WINDOW_S

    def peak(self, host: str | None = None) -> int:
        """The most packets taken within any one second, for one host or the busiest."""
        with self._lock:
            logs = [self._log.get(host, [])] if host is not None else list(self._log.values())
        best = 0
        for log in logs:
            for i, (start, _) in enumerate(log):
                best = max(best, sum(n for t, n in log[i:] if t < start + WINDOW_S))
        return best
