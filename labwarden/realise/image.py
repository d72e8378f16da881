"""The lab node image: built once from `labwarden/image/`, then reused.

The tag carries a hash of the build context, so a change to the Dockerfile or
to the services script builds a new image and an old one is never run by
mistake. The Dockerfile's base (`ARG BASE=debian:bookworm`, `FROM ${BASE}`) is
used if present, else pulled where a registry answers; where none does (our CI
machines), it is made locally with debootstrap from the Debian mirror apt already
uses and imported under labwarden's own name (`labwarden/debian-base:bookworm`,
`own_base`), never under `debian:bookworm`, which other images on the engine
share; the build then gets `--build-arg BASE=` that tag, so both paths build the
same Dockerfile. Whatever debootstrap mounted in its folder (proc, sys) is
unmounted on every way out, an interrupt included, before the folder is removed.
Both debootstrap and the build show their progress (labwarden.realise.progress).
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from labwarden.errors import LabError
from labwarden.realise import private
from labwarden.realise.progress import Progress, run
from labwarden.realise.cleanup import interrupts_deferred

CONTEXT = Path(__file__).parent / "image"
REPOSITORY = "labwarden/node"
OWN_BASE = "labwarden/debian-base"  # where a debootstrapped base is imported: see own_base
MOUNTS = Path("/proc/self/mounts")


def image_tag() -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in CONTEXT.iterdir() if p.is_file()):
        digest.update(name.encode() + b"\0" + (CONTEXT / name).read_bytes())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def base_image(dockerfile: str | None = None) -> str:
    """The base the Dockerfile builds on: its `ARG BASE=` default (`FROM ${BASE}`), or a plain FROM."""
    text = (CONTEXT / "Dockerfile").read_text() if dockerfile is None else dockerfile
    arg = re.search(r"^ARG\s+BASE=(\S+)", text, re.M)
    if arg:
        return arg.group(1)
    return re.search(r"^FROM\s+(\S+)", text, re.M).group(1)


def own_base(ref: str) -> str:
    """labwarden's own name for a base it makes itself: `debian:bookworm` ->
    `labwarden/debian-base:bookworm`. Never the upstream name, which other images share."""
    return f"{OWN_BASE}:{ref.partition(':')[2] or 'bookworm'}"


def _present(ref: str) -> bool:
    return _docker("image", "inspect", ref, check=False).returncode == 0


def _docker(*args, check=True, timeout=600):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`docker {' '.join(args)}` failed: {proc.stderr.strip()[-2000:]}")
    return proc


def debian_mirror(sources=(Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The first Debian mirror apt is configured with (one-line or deb822 sources)."""
    files = []
    for src in sources:
        files += sorted(src.glob("*")) if src.is_dir() else [src] if src.exists() else []
    for file in files:
        for line in file.read_text(errors="replace").splitlines():
            match = re.match(r"\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+/debian)/?\s*", line)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def bootstrap_base(ref: str, log, suite: str = "bookworm") -> None:
    """Make the Debian base image without a registry: debootstrap, then docker import as `ref`
    (labwarden's own name, see own_base)."""
    if not shutil.which("debootstrap"):
        raise LabError(f"the base image {ref} cannot be pulled and debootstrap is missing: "
                       "install it (apt-get install debootstrap) or make the image available")
    mirror = debian_mirror()
    log(f"labwarden: no registry answers; debootstrapping Debian {suite} from {mirror} as {ref}")
    root = tempfile.mkdtemp(prefix="labwarden-rootfs-")
    try:
        progress = Progress(log, f"debootstrap of {suite}")
        code, out = run(["debootstrap", "--variant=minbase", suite, root, mirror], progress, timeout=900)
        if code != 0:
            why = "timed out after 900 s" if code < 0 else f"failed (exit {code})"
            raise LabError(f"debootstrap {suite} {why}: {out[-3000:]}")
        progress.finish("done")
        unmount_under(root)  # nothing of the host goes into the image
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "-", ref], stdin=tar.stdout,
                             capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0:
            raise LabError(f"docker import of the debootstrapped {suite} failed: {imp.stderr}")
        log(f"labwarden: imported the debootstrapped {suite} as {ref}")
    finally:  # also on Ctrl-C, SIGTERM or a timeout, which kill debootstrap before it unmounts
        with interrupts_deferred():
            unmount_under(root)
            shutil.rmtree(root)  # only once nothing is mounted there: never into the host's /proc or /dev


def mount_points(mounts: str) -> list[str]:
    """The mount points of a mount table (/proc/self/mounts: octal escapes for spaces)."""
    points = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    return points


def umount(*argv: str) -> bool:
    return subprocess.run(["umount", *argv], capture_output=True, text=True, timeout=60).returncode == 0


def unmount_under(root: str) -> None:
    """Unmount whatever is mounted at or under `root` (debootstrap's proc, sys, dev/pts),
    deepest first; a LabError naming what stays mounted, then (and the folder is kept)."""
    base = os.path.realpath(root)
    inside = [p for p in mount_points(MOUNTS.read_text()) if p == base or p.startswith(base + "/")]
    stuck = [p for p in sorted(set(inside), key=lambda p: -p.count("/"))
             if not umount(p) and not umount("--lazy", p)]
    if stuck:
        raise LabError(f"{', '.join(stuck)} stayed mounted after debootstrap: unmount "
                       f"(`umount --lazy PATH`), then remove {root}")


def ensure_image(log=print) -> str:
    """Return the tag of the lab image, building it (and its base) if needed."""
    tag = image_tag()
    if _present(tag):
        return tag
    with private.open_lock("image.lock", "lock of the image build") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build once
        if _present(tag):
            return tag
        build_args = base_args(base_image(), log)
        log(f"labwarden: building the lab image {tag} (once; a few minutes on a fresh machine)")
        progress = Progress(log, "lab image")
        code, out = run(["docker", "build", *build_args, "-t", tag, str(CONTEXT)], progress, timeout=1200,
                        env=dict(os.environ, BUILDKIT_PROGRESS="plain"))
        if code != 0:
            why = "timed out after 1200 s" if code < 0 else f"failed (exit {code})"
            raise LabError(f"`docker build -t {tag} {CONTEXT}` {why}: {out[-3000:]}")
        progress.finish(f"built {tag}")
    return tag


def base_args(base: str, log) -> list[str]:
    """The build arguments that pick the base: none for the Dockerfile's own (present or
    pulled), else labwarden's own debootstrapped one, made if missing."""
    if _present(base):
        return []
    own = own_base(base)
    if not _present(own):
        log(f"labwarden: pulling {base}")
        if _docker("pull", base, check=False, timeout=300).returncode == 0:
            return []
        bootstrap_base(own, log, suite=base.partition(":")[2] or "bookworm")
    return ["--build-arg", f"BASE={own}"]
