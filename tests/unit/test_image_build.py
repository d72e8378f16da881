"""The image build: which base it uses (never overwriting `debian:bookworm` on the engine),
and the progress it shows (labwarden.realise.image, labwarden.realise.progress)."""

import io

import pytest

from labwarden.errors import LabError
from labwarden.realise import image, progress


class Engine:
    """A fake Docker engine for image.base_args: which images exist, what a pull does."""

    def __init__(self, present=(), pull_works=False):
        self.present, self.pull_works = set(present), pull_works
        self.imported: list[str] = []

    def install(self, monkeypatch):
        monkeypatch.setattr(image, "_present", lambda ref: ref in self.present)
        monkeypatch.setattr(image, "_docker", self.docker)
        monkeypatch.setattr(image, "bootstrap_base", self.bootstrap)

    def docker(self, *args, check=True, timeout=600):
        assert args[0] == "pull", args
        if self.pull_works:
            self.present.add(args[1])
        return type("Proc", (), {"returncode": 0 if self.pull_works else 1})()

    def bootstrap(self, ref, log, suite="bookworm"):
        self.imported.append(ref)
        self.present.add(ref)


def test_the_dockerfile_names_its_base_as_a_build_argument():
    assert image.base_image() == "debian:bookworm"
    assert image.base_image("FROM debian:trixie\nRUN true\n") == "debian:trixie"
    assert image.base_image("ARG BASE=debian:trixie\nFROM ${BASE}\n") == "debian:trixie"


def test_without_a_registry_the_base_is_labwarden_s_own_never_debian_s(monkeypatch):
    engine = Engine()
    engine.install(monkeypatch)
    args = image.base_args("debian:bookworm", log=lambda m: None)
    assert engine.imported == ["labwarden/debian-base:bookworm"]
    assert "debian:bookworm" not in engine.present
    assert args == ["--build-arg", "BASE=labwarden/debian-base:bookworm"]
    assert image.base_args("debian:bookworm", log=lambda m: None) == args  # made once, then reused
    assert engine.imported == ["labwarden/debian-base:bookworm"]


@pytest.mark.parametrize("engine", [Engine(present={"debian:bookworm"}), Engine(pull_works=True)])
def test_a_present_or_pulled_base_is_used_as_it_is(monkeypatch, engine):
    engine.install(monkeypatch)
    assert image.base_args("debian:bookworm", log=lambda m: None) == []
    assert engine.imported == []


def test_own_base_names():
    assert image.own_base("debian:bookworm") == "labwarden/debian-base:bookworm"
    assert image.own_base("debian") == "labwarden/debian-base:bookworm"
    assert image.own_base("debian:bookworm").split(":")[0] != "debian"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


CLASSIC = """\
Step 1/4 : ARG BASE=debian:bookworm
Step 2/4 : FROM ${BASE}
 ---> 1b2c3d4e5f60
Step 3/4 : RUN apt-get update  && apt-get install -y python3 nftables
 ---> Running in 0a1b2c3d4e5f
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded.
Setting up nftables (1.0.6-2+deb12u2) ...
Setting up python3 (3.11.2-1+b1) ...
Step 4/4 : COPY services.py /usr/local/bin/lab-services
Successfully built 2b3c4d5e6f70
"""


def test_without_a_terminal_each_step_is_a_log_line_with_its_time():
    clock, said = Clock(), []
    shown = progress.Progress(said.append, "lab image", tty=False, stream=io.StringIO(), clock=clock)
    for line in CLASSIC.splitlines():
        clock.now += 5
        shown.feed(line)
    shown.finish("built labwarden/node:abc")
    assert said[0] == "labwarden: lab image: step 1/4: ARG BASE=debian:bookworm (5 s)"
    assert said[2].startswith("labwarden: lab image: step 3/4: RUN apt-get update") and said[2].endswith("(20 s)")
    assert "labwarden: lab image: still at step 3/4 (35 s): 0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded." in said
    assert said[-1] == "labwarden: lab image: built labwarden/node:abc in 55 s"


def test_on_a_terminal_one_line_is_redrawn_with_a_bar():
    clock, said, tty = Clock(), [], io.StringIO()
    shown = progress.Progress(said.append, "lab image", tty=True, stream=tty, clock=clock)
    lines = CLASSIC.splitlines()
    for line in lines[:lines.index("Setting up python3 (3.11.2-1+b1) ...") + 1]:
        clock.now += 1
        shown.feed(line)
    assert shown.fraction() == pytest.approx((2 + 2 / 4) / 4)  # step 3 of 4, 2 of its 4 packages
    assert "[############........]  62% step 3/4" in shown.status(200)
    assert tty.getvalue().count("\r\033[K") >= 3 and "\n" not in tty.getvalue()
    assert said == []  # nothing logged while drawing
    shown.finish("built x")
    assert said == ["labwarden: lab image: built x in 9 s"]


def test_buildkit_and_debootstrap_steps_are_recognised():
    said = []
    shown = progress.Progress(said.append, "x", tty=False, stream=io.StringIO(), clock=Clock())
    shown.feed("#6 [2/3] RUN apt-get update")
    shown.feed("I: Retrieving InRelease ")
    shown.feed("I: Extracting libc6...")
    assert [s.split(": ", 2)[2] for s in said] == ["step 2/3: RUN apt-get update (0 s)", "Retrieving InRelease (0 s)",
                                                    "Extracting libc6 (0 s)"]


def test_run_streams_lines_and_kills_at_its_timeout():
    said = []
    shown = progress.Progress(said.append, "t", tty=False, stream=io.StringIO())
    code, tail = progress.run(["sh", "-c", "echo 'Step 1/2 : RUN x'; echo oops >&2; exit 3"], shown, timeout=30)
    assert code == 3 and tail.splitlines() == ["Step 1/2 : RUN x", "oops"]
    assert said and "step 1/2: RUN x" in said[0]
    code, _ = progress.run(["sleep", "30"], shown, timeout=0.3)
    assert code < 0


def test_a_failed_build_names_its_output(monkeypatch):
    monkeypatch.setattr(image, "_present", lambda ref: ref == "debian:bookworm")
    monkeypatch.setattr(image, "image_tag", lambda: "labwarden/node:test")
    monkeypatch.setattr(image, "run", lambda argv, progress, timeout, env=None: (1, "E: Unable to locate package x"))
    with pytest.raises(LabError, match=r"docker build -t labwarden/node:test .* failed \(exit 1\): E: Unable"):
        image.ensure_image(log=lambda m: None)
