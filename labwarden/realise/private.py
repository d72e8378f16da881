"""labwarden's private folder on this machine, and the only way files are made in it.

Whatever labwarden keeps outside a run's own temporary folders lives here: the locks
runs take turns on (`ranges.lock` and the labs' claims `ranges-*.lock`: realise/ranges.py;
`image.lock`), the generated compose files
of labs (`<project>.override.yaml`, the prober: run as root by Docker) and a live lab's
SSH control sockets. The folder is `labwarden-<uid>` in the temporary folder (/tmp, or
TMPDIR), private to the user who runs labwarden:

- made with mkdir(2), which is atomic (whoever makes it owns it), at mode 0700;
- refused when it is a symlink, not a folder, someone else's, or open to others, with
  an error that says which and how to fix it (nothing is repaired behind your back);
- files in it are opened with O_NOFOLLOW through a descriptor of the checked folder:
  a symlink planted where one goes is refused, never followed, and nothing is ever
  truncated through one (a root run once truncated a symlink's target in /tmp).

Runs by different users keep different folders, so they do not share locks either.
"""

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

from labwarden.errors import LabError


def folder() -> Path:
    """The private folder, made if missing and checked either way."""
    with _opened(_path()):
        return _path()


def _path() -> Path:
    return Path(tempfile.gettempdir()) / f"labwarden-{os.getuid()}"


@contextlib.contextmanager
def _opened(path: Path):
    """A descriptor of the checked folder (opened without following a symlink)."""
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700, follow_symlinks=False)  # whatever the umask took away
    except FileExistsError:
        pass
    except OSError as err:
        raise LabError(f"{path}: cannot make labwarden's private folder: {err.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        fd, opening = None, err.strerror
    try:
        why = _unsafe(path, os.lstat(path) if fd is None else os.fstat(fd))
        if why or fd is None:
            why = why or f"it cannot be opened ({opening})"
            raise LabError(f"{path}: refusing it as labwarden's private folder: {why}; what labwarden "
                           "keeps there is written and run as this user. Remove it (labwarden makes it "
                           "again, mode 0700) or point TMPDIR at another temporary folder")
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _unsafe(path: Path, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return f"it is a symlink (to {os.readlink(path)}), which is never followed"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid != os.getuid():
        return f"it belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    if st.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(st.st_mode):04o}: others may use it (it must be 0700)"
    return None


def _open(name: str, flags: int, what: str, dir_fd: int, path: Path) -> int:
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise LabError(f"{path}: a symlink (to {os.readlink(path)}) is where labwarden's {what} "
                           "goes; it is not followed (its target would be written as this user): "
                           "remove it") from None
        raise LabError(f"{path}: cannot open labwarden's {what}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LabError(f"{path}: labwarden's {what} goes here, but this is not a regular file: remove it")
    return fd


def open_lock(name: str, what: str = "lock"):
    """The lock file `name`, made if missing, never truncated, for fcntl.flock (a file object)."""
    path = _path() / name
    with _opened(path.parent) as dir_fd:
        return os.fdopen(_open(name, os.O_RDWR | os.O_CREAT, what, dir_fd, path), "r+")


def write(name: str, text: str, what: str) -> Path:
    """Replace the file `name` with `text` atomically (a new file renamed over it); its path."""
    path = _path() / name
    with _opened(path.parent) as dir_fd:
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, what, dir_fd, path.parent / tmp)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # a symlink there is replaced
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    return path
