"""An interrupted or failed debootstrap leaves nothing mounted (labwarden.realise.image):
a fake debootstrap 'mounts' proc and sys into a fake mount table, then is interrupted."""

import os

import pytest

from labwarden.errors import LabError
from labwarden.realise import image


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A fake /proc/self/mounts, and a fake umount that takes lines out of it."""
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n")
    calls = []

    def umount(*argv):
        calls.append(argv)
        point = argv[-1]
        lines = mounts.read_text().splitlines()
        mounts.write_text("".join(line + "\n" for line in lines if line.split()[1] != point))
        return True

    monkeypatch.setattr(image, "MOUNTS", mounts)
    monkeypatch.setattr(image, "umount", umount)
    return mounts, calls


def fake_debootstrap(mounts, then):
    def run(argv, progress, timeout, **kw):
        if argv[0] != "debootstrap":
            raise AssertionError(argv)
        root = argv[3]
        with open(mounts, "a") as table:
            table.write(f"proc {root}/proc proc rw 0 0\nsysfs {root}/sys sysfs rw 0 0\n"
                        f"devpts {root}/dev/pts devpts rw 0 0\n")
        if isinstance(then, BaseException):
            raise then
        return then, "I: Extracting libc6...\n"  # killed at its timeout: a negative exit code
    return run


@pytest.mark.parametrize("then", [KeyboardInterrupt(), -9])
def test_an_interrupted_debootstrap_is_unmounted_and_removed(table, monkeypatch, tmp_path, then):
    mounts, calls = table
    monkeypatch.setattr(image.shutil, "which", lambda name: "/usr/sbin/debootstrap")
    monkeypatch.setattr(image.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "rootfs"))
    os.mkdir(tmp_path / "rootfs")
    monkeypatch.setattr(image, "run", fake_debootstrap(mounts, then))
    with pytest.raises(type(then) if isinstance(then, BaseException) else LabError):
        image.bootstrap_base("labwarden/debian-base:bookworm", log=lambda m: None)
    assert mounts.read_text() == "sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n"  # the host's stay
    root = str(tmp_path / "rootfs")
    assert calls[0] == (f"{root}/dev/pts",)  # deepest first
    assert {c[-1] for c in calls} == {f"{root}/dev/pts", f"{root}/proc", f"{root}/sys"}
    assert not (tmp_path / "rootfs").exists()


def test_what_stays_mounted_is_named_and_its_folder_kept(table, monkeypatch, tmp_path):
    mounts, _ = table
    root = tmp_path / "rootfs"
    (root / "proc").mkdir(parents=True)
    mounts.write_text(mounts.read_text() + f"proc {root}/proc proc rw 0 0\n")
    monkeypatch.setattr(image, "umount", lambda *argv: False)
    with pytest.raises(LabError, match=rf"{root}/proc stayed mounted"):
        image.unmount_under(str(root))


def test_mount_points_decode_escapes():
    assert image.mount_points("proc /tmp/a\\040b/proc proc rw 0 0\n") == ["/tmp/a b/proc"]
