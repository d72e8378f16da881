"""What a long first run shows while the node image is made: steps, elapsed time, a bar.

`Progress` is fed a tool's output line by line (`docker build`'s, classic builder or
BuildKit with plain progress, or debootstrap's) and tells the user where it is: on a
terminal, one line redrawn in place (a bar over the build's steps, the step, the seconds
so far and the tool's last line); elsewhere (a CI log, pytest's capture), one log line per
step and a line every `heartbeat_s` while a step lasts. `run` streams a command through it.
Nothing here knows Docker: it parses text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque

CLASSIC_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")             # docker build, legacy builder
BUILDKIT_STEP = re.compile(r"^#\d+ \[(?:[^\]]*? )?(\d+)/(\d+)\] (.*)$")  # BUILDKIT_PROGRESS=plain
DEBOOTSTRAP_STEP = re.compile(r"^I: (.*?)\.*$")
APT_TOTAL = re.compile(r"(\d+) newly installed")
APT_DONE = "Setting up "


class Progress:
    def __init__(self, log, what: str, tty: bool | None = None, stream=None, clock=time.monotonic,
                 heartbeat_s: float = 15.0):
        self.log, self.what, self.clock, self.heartbeat_s = log, what, clock, heartbeat_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = self.said = clock()
        self.step, self.steps, self.name = 0, 0, ""
        self.packages, self.set_up = 0, 0
        self.activity = ""
        self.drawn = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def fraction(self) -> float | None:
        """How far the build is, when its steps are counted (apt's packages within a step)."""
        if not self.steps:
            return None
        within = min(self.set_up / self.packages, 1.0) if self.packages else 0.0
        return min((self.step - 1 + within) / self.steps, 1.0)

    def feed(self, line: str) -> None:
        line = line.rstrip()
        match = CLASSIC_STEP.match(line) or BUILDKIT_STEP.match(line)
        if match:
            step, steps, name = int(match[1]), int(match[2]), match[3]
            if (step, steps) != (self.step, self.steps):
                self._enter(name, step, steps)
            return
        match = DEBOOTSTRAP_STEP.match(line)
        if match:
            self._enter(match[1])
            return
        if (total := APT_TOTAL.search(line)):
            self.packages = int(total[1])
        if line.startswith(APT_DONE):
            self.set_up += 1
        if line.strip() and not line.startswith(" ---> "):
            self.activity = re.sub(r"^#\d+ \d+\.\d+ ", "", line).strip()
        self._tick()

    def _enter(self, name: str, step: int = 0, steps: int = 0) -> None:
        self.step, self.steps, self.name = step, steps, name
        self.packages = self.set_up = 0
        self.activity = ""
        if self.tty:
            self._draw(force=True)
        else:
            at = f"step {step}/{steps}: " if steps else ""
            self.log(f"labwarden: {self.what}: {at}{short(name, 100)} ({self.elapsed():.0f} s)")
            self.said = self.clock()

    def _tick(self) -> None:
        if self.tty:
            self._draw()
        elif self.clock() - self.said >= self.heartbeat_s:
            at = f"step {self.step}/{self.steps}" if self.steps else short(self.name, 60)
            doing = f": {short(self.activity, 100)}" if self.activity else ""
            self.log(f"labwarden: {self.what}: still at {at} ({self.elapsed():.0f} s){doing}")
            self.said = self.clock()

    def bar(self, width: int = 20) -> str:
        fraction = self.fraction()
        if fraction is None:
            return ""
        full = int(fraction * width)
        return "[" + "#" * full + "." * (width - full) + f"] {fraction * 100:3.0f}% "

    def status(self, columns: int = 100) -> str:
        at = f"step {self.step}/{self.steps} " if self.steps else ""
        head = f"{self.what} {self.bar()}{at}{self.elapsed():.0f} s: "
        tail = short(self.name, 40) + (f" | {self.activity}" if self.activity else "")
        return short(head + tail, max(columns - 1, 20))

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.drawn < 0.1:
            return
        self.drawn = now
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\033[K" + self.status(columns))
        self.stream.flush()

    def finish(self, outcome: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.log(f"labwarden: {self.what}: {outcome} in {self.elapsed():.0f} s")


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def run(argv: list[str], progress: Progress, timeout: float, stdin=None, env=None) -> tuple[int, str]:
    """Run argv, its output (stdout and stderr) fed line by line to `progress`; the exit code
    and the output's last lines. Killed past `timeout` (exit code then negative) and on any
    exception, an interrupt included, before that propagates."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=env)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    tail: deque[str] = deque(maxlen=40)
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            progress.feed(line)
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        proc.stdout.close()
    return code, "\n".join(tail)
