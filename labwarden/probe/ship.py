"""The agent as shipped into nodes: labwarden/agent/ built into one zipapp.

`python3 agent.pyz -` is the probe agent (the request on stdin), `python3 agent.pyz delayline ...` the
delay line (see agent/__main__.py). The Docker lab mounts the file into its prober;
a live lab pushes its bytes to each host over SSH. The bytes depend only on the
agent's sources (sorted names, fixed timestamps and modes), and the built file is
kept under its content hash in a folder only this user can write: the prober runs it
as root, so nobody else may swap it.
"""

import functools
import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

from labwarden.errors import LabError

SOURCE = Path(__file__).resolve().parent.parent / "agent"
IN_PROBER = "/opt/labwarden/agent.pyz"  # where the Docker lab's prober sees it
SHEBANG = b"#!/usr/bin/env python3\n"
EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest time: no build time in the bytes
CACHE = Path.home() / ".cache" / "labwarden"


def agent_bytes() -> bytes:
    """The zipapp's bytes, built in memory from the agent folder's modules."""
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(SOURCE.glob("*.py")):
            info = zipfile.ZipInfo(path.name, EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system, info.external_attr = 3, 0o644 << 16  # Unix, rw-r--r--, on any OS
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return buf.getvalue()


def cache_dir() -> Path:
    """CACHE, made if missing, private to this user."""
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = CACHE.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise LabError(f"{CACHE}: the agent's cache must belong to this user and be writable by "
                       f"nobody else (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o})")
    return CACHE


@functools.cache
def agent_zipapp() -> Path:
    """The zipapp's path, built once per content (a file whose bytes differ is rebuilt)."""
    data = agent_bytes()
    path = cache_dir() / f"agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not path.is_file() or path.read_bytes() != data:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path
