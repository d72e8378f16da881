"""The lab node image: built once from `labwarden/image/`, then reused.

The tag carries a hash of the build context, so a change to the Dockerfile or
to the services script builds a new image and an old one is never run by
mistake. The Dockerfile's base (`FROM debian:bookworm`) is pulled where a
registry answers; where none does (our CI machines), it is made locally with
debootstrap from the Debian mirror apt already uses and imported under the
same tag, so both paths build the same Dockerfile. Whatever debootstrap mounted
in its folder (proc, sys) is unmounted on every way out, an interrupt included,
before the folder is removed.
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
from labwarden.realise.cleanup import interrupts_deferred

CONTEXT = Path(__file__).parent / "image"
REPOSITORY = "labwarden/node"
MOUNTS = Path("/proc/self/mounts")


def image_tag() -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in CONTEXT.iterdir() if p.is_file()):
        digest.update(name.encode() + b"\0" + (CONTEXT / name).read_bytes())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def base_image() -> str:
    match = re.search(r"^FROM\s+(\S+)", (CONTEXT / "Dockerfile").read_text(), re.M)
    return match.group(1)


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


def bootstrap_base(ref: str, log) -> None:
    """Make the Debian base image without a registry: debootstrap, then docker import."""
    if not shutil.which("debootstrap"):
        raise LabError(f"the base image {ref} cannot be pulled and debootstrap is missing: "
                       "install it (apt-get install debootstrap) or make the image available")
    suite = ref.partition(":")[2] or "bookworm"
    mirror = debian_mirror()
    log(f"labwarden: no registry for {ref}; debootstrapping {suite} from {mirror}")
    root = tempfile.mkdtemp(prefix="labwarden-rootfs-")
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", suite, root, mirror],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise LabError(f"debootstrap {suite} failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        unmount_under(root)  # nothing of the host goes into the image
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "-", ref], stdin=tar.stdout,
                             capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0:
            raise LabError(f"docker import of the debootstrapped {suite} failed: {imp.stderr}")
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
        base = base_image()
        if not _present(base) and _docker("pull", base, check=False, timeout=300).returncode != 0:
            bootstrap_base(base, log)
        log(f"labwarden: building {tag}")
        _docker("build", "-q", "-t", tag, str(CONTEXT), timeout=1200)
    return tag
