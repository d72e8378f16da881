"""labwarden's private folder: made private, refused when it is not, and no symlink in it
is ever followed (realise/private.py)."""

import fcntl
import os
import tempfile
from ipaddress import ip_network

import pytest

from labwarden.errors import LabError
from labwarden.realise import cleanup, private
from labwarden.realise.ranges import RangesLock


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


@pytest.fixture
def target(tmp_path):
    """A file a symlink could point labwarden at: it must stay as it is."""
    path = tmp_path / "precious"
    path.write_text("keep me\n")
    return path


def test_the_folder_is_made_private_and_holds_the_locks_and_compose_files(tmp):
    with private.open_lock("image.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    written = cleanup.write_override("lw-homelab-abc123", "services: {}\n")
    home = tmp / f"labwarden-{os.getuid()}"
    st = os.lstat(home)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.getuid()
    assert written == cleanup.override_file("lw-homelab-abc123") == home / "lw-homelab-abc123.override.yaml"
    assert written.read_text() == "services: {}\n" and written.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["image.lock", "lw-homelab-abc123.override.yaml"]


def test_a_symlinked_folder_is_refused_not_followed(tmp, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp / f"labwarden-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(LabError, match=r"labwarden-\d+: refusing it as labwarden's private folder: it is a "
                                       r"symlink \(to .*elsewhere\), which is never followed; .*Remove it"):
        private.open_lock("image.lock")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode, why", [(0o755, "its mode is 0755: others may use it"),
                                       (0o1777, "its mode is 1777: others may use it")])
def test_a_folder_others_may_use_is_refused(tmp, mode, why):
    home = tmp / f"labwarden-{os.getuid()}"
    home.mkdir()
    home.chmod(mode)
    with pytest.raises(LabError, match=why):
        cleanup.write_override("lw-homelab-abc123", "services: {}\n")
    assert list(home.iterdir()) == []


def test_a_folder_of_someone_else_is_refused(tmp, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # the folder of uid 4242, made by someone else
    (tmp / "labwarden-4242").mkdir(mode=0o700)
    with pytest.raises(LabError, match=r"it belongs to uid \d+, not to this user \(uid 4242\)"):
        private.folder()


def test_a_file_in_place_of_the_folder_is_refused(tmp):
    (tmp / f"labwarden-{os.getuid()}").write_text("")
    with pytest.raises(LabError, match="it is not a folder"):
        private.folder()


def test_a_symlink_where_a_lock_goes_is_not_followed(tmp, target):
    lock = private.folder() / "ranges.lock"
    lock.symlink_to(target)
    with pytest.raises(LabError, match=r"ranges.lock: a symlink \(to .*precious\) is where "
                                       r"labwarden's lock of the labs' address ranges goes; it is not followed "
                                       r".*remove it"):
        RangesLock([ip_network("198.18.1.0/24")], "lab lw-homelab-abc123").acquire(0)
    assert target.read_text() == "keep me\n"


def test_a_dangling_symlink_where_a_lock_goes_creates_nothing(tmp, tmp_path):
    (private.folder() / "image.lock").symlink_to(tmp_path / "made-by-root")
    with pytest.raises(LabError, match="image.lock: a symlink .* is not followed"):
        private.open_lock("image.lock")
    assert not (tmp_path / "made-by-root").exists()


def test_a_symlink_where_a_compose_file_goes_is_replaced_not_written_through(tmp, target):
    override = cleanup.override_file("lw-homelab-abc123")
    override.symlink_to(target)
    cleanup.write_override("lw-homelab-abc123", "services: {}\n")
    assert target.read_text() == "keep me\n"
    assert not override.is_symlink() and override.read_text() == "services: {}\n"


def test_a_lock_that_is_not_a_regular_file_is_refused(tmp):
    os.mkfifo(private.folder() / "image.lock")
    with pytest.raises(LabError, match="image.lock: labwarden's lock goes here, but this is not a regular file"):
        private.open_lock("image.lock")


def test_down_all_finds_stale_compose_files_in_the_folder(tmp, monkeypatch, target):
    class Api:
        def containers(self, **kw):
            return []

        def networks(self, **kw):
            return []

    monkeypatch.setattr(cleanup, "docker_client", lambda: type("Client", (), {"api": Api()})())
    stale = cleanup.write_override("lw-homelab-dead00", "services: {}\n")
    planted = cleanup.override_file("lw-homelab-planted")
    planted.symlink_to(target)
    assert cleanup.down_all() == []
    assert not stale.exists() and not planted.is_symlink() and target.read_text() == "keep me\n"
