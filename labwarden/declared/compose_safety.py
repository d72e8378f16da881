"""What a lab's compose.yaml may ask of Docker: a topology folder is not arbitrary root code.

labwarden hands the lab folder's compose file to Docker as root. A lab is containers on
private bridges, so anything that reaches the host through them is refused here, before
anything starts, with a ConfigError naming file, field and problem:

- host namespaces (``network_mode``, ``pid``, ``ipc``, ``uts``, ``userns_mode``,
  ``cgroup`` set to ``host``), joining a container outside the lab (``container:X`` that
  is not one of the file's services), ``network_mode: bridge``;
- ``privileged``, capabilities beyond Docker's default set plus NET_ADMIN and friends
  (``cap_add: [ALL]``, SYS_ADMIN, SYS_MODULE, ...), ``devices`` other than /dev/net/tun,
  ``device_cgroup_rules``, GPUs, ``security_opt`` other than no-new-privileges, labels
  and named AppArmor profiles (``*unconfined``, ``label=disable``, ``seccomp=...``),
  ``cgroup_parent``, another ``runtime``, ``use_api_socket``, ``provider``, privileged
  ``post_start``/``pre_stop`` hooks;
- host paths outside the lab folder (symlinks followed): bind mounts, ``env_file``,
  ``configs``/``secrets`` files, local volumes backed by a host ``device``; named
  volumes are fine. ``include``, ``extends: {file: ...}``, ``volumes_from: container:X``
  (what they bring in is not in this file) and external networks or volumes;
- network drivers other than bridge (macvlan, ipvlan, host, ...), and a bridge given a
  host bridge's name (``com.docker.network.bridge.name``);
- ``$`` interpolation in any of those keys (its value comes from the environment or the
  folder's ``.env``, which this check cannot see).

``--allow-unsafe-compose`` (the CLI; ``--lw-allow-unsafe-compose`` for pytest) skips this check:
the user's explicit choice.
Declared data only: nothing here talks to Docker.
"""

from __future__ import annotations

import re
from pathlib import Path

from labwarden.errors import ConfigError
from labwarden.declared.fields import is_inside, lab_root, resolve

ALLOW_OPTION = "--allow-unsafe-compose"         # the labwarden CLI's
PYTEST_ALLOW_OPTION = "--lw-allow-unsafe-compose"  # the pytest plugin's
ALLOW_HELP = ("run a compose file that reaches the host (privileged, host namespaces, host mounts, "
              "extra capabilities or devices, macvlan, ...): refused by default")
# Docker's default capabilities, and the network ones a lab node may need
SAFE_CAPS = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                       "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
                       "SYS_CHROOT", "NET_ADMIN", "NET_BROADCAST", "IPC_LOCK", "SYS_NICE"})
SAFE_DEVICES = ("/dev/net/tun",)
NAMESPACE_KEYS = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
REFUSED_KEYS = {"privileged": "gives the container every capability and every host device",
                "cgroup_parent": "places the container in a host cgroup of the file's choosing",
                "device_cgroup_rules": "lets the container use host devices",
                "gpus": "gives the container host devices",
                "runtime": "runs the container under another runtime than Docker's default",
                "use_api_socket": "hands the container the Docker engine's socket: root on the host",
                "provider": "runs a program of the file's choosing on the host",
                "include": "brings in another compose file, which this check does not read"}
INTERPOLATED = re.compile(r"(?<!\$)\$(?!\$)")  # $VAR, ${VAR}; $$ is a literal $


class _Paths:
    """Where relative host paths start (Compose's project folder: the compose file's) and
    the folder they must stay in (labwarden.declared.fields.lab_root)."""

    def __init__(self, compose: Path):
        self.base, self.root = Path(compose).resolve().parent, lab_root(Path(compose).parent)


def check_compose(f, compose: Path, doc: dict) -> None:
    """Refuse whatever in a parsed compose file reaches the host (see the module's docstring)."""
    folder = _Paths(compose)
    services = _mappings(doc.get("services"))
    if doc.get("include") is not None:
        _refuse(f, "include", REFUSED_KEYS["include"])
    for name, spec in services.items():
        _service(f, folder, f"services.{name}", spec, services)
    for name, spec in _mappings(doc.get("networks")).items():
        _network(f, f"networks.{name}", spec)
    for name, spec in _mappings(doc.get("volumes")).items():
        _volume(f, folder, f"volumes.{name}", spec)
    for kind in ("configs", "secrets"):
        for name, spec in _mappings(doc.get(kind)).items():
            _no_interpolation(f, f"{kind}.{name}", spec)
            if spec.get("external"):
                _refuse(f, f"{kind}.{name}.external", "is not part of the lab")
            if spec.get("file") is not None:
                _inside(f, folder, f"{kind}.{name}.file", spec["file"])


def _refuse(f, where: str, why: str):
    raise ConfigError(f, where, f"{why}: refused, a lab folder must not reach the host "
                      f"(pass {ALLOW_OPTION}, or {PYTEST_ALLOW_OPTION} to pytest, to run it anyway)")


def _no_interpolation(f, where: str, raw) -> None:
    """A value Compose would fill from the environment cannot be checked: refuse it."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            _no_interpolation(f, f"{where}.{key}", value)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            _no_interpolation(f, f"{where}[{i}]", value)
    elif isinstance(raw, str) and INTERPOLATED.search(raw):
        _refuse(f, where, f"{raw!r} takes its value from the environment, which labwarden cannot check")


def _inside(f, folder: _Paths, where: str, raw) -> None:
    """A host path named by the file must lie inside the lab folder (symlinks followed)."""
    resolved = resolve(folder.base, raw)
    if resolved is None or not is_inside(folder.root, resolved):
        _refuse(f, where, f"{raw!r} is a host path outside the lab folder {folder.root}"
                + (f" (it leads to {resolved})" if str(resolved) != str(raw) else ""))


def _service(f, folder: _Paths, where: str, spec: dict, services: dict) -> None:
    for key, why in REFUSED_KEYS.items():
        if key != "include" and spec.get(key) not in (None, False):
            _refuse(f, f"{where}.{key}", why)
    checked = {k: spec[k] for k in (*NAMESPACE_KEYS, "cap_add", "devices", "security_opt", "volumes",
                                    "volumes_from", "env_file", "extends", "deploy") if k in spec}
    _no_interpolation(f, where, checked)
    names = {"service": set(services),  # container:X is a container's own name, not a service's
             "container": {str(s["container_name"]) for s in services.values() if s.get("container_name")}}
    for key in NAMESPACE_KEYS:
        mode = spec.get(key)
        if mode is None:
            continue
        kind, _, other = str(mode).partition(":")
        if (key == "network_mode" and str(mode) == "none") or other in names.get(kind, ()):
            continue
        if kind in names:
            _refuse(f, f"{where}.{key}", f"{mode!r} is not one of this lab's "
                    + ("services" if kind == "service" else "containers (container_name)"))
        if kind == "host":
            _refuse(f, f"{where}.{key}", f"{mode!r} puts the container in the host's namespace")
        if key == "network_mode":
            _refuse(f, f"{where}.{key}", f"{mode!r} is not a lab network (use the file's networks, "
                    "none, or service:NAME)")
    for i, cap in enumerate(_as_list(spec.get("cap_add"))):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in SAFE_CAPS:
            _refuse(f, f"{where}.cap_add[{i}]", f"{cap} is more than a lab node needs "
                    f"(allowed: {', '.join(sorted(SAFE_CAPS))})")
    for i, device in enumerate(_as_list(spec.get("devices"))):
        source = device.get("source") if isinstance(device, dict) else str(device).split(":")[0]
        if source not in SAFE_DEVICES:
            _refuse(f, f"{where}.devices[{i}]", f"{source} is a host device (allowed: {', '.join(SAFE_DEVICES)})")
    for i, opt in enumerate(_as_list(spec.get("security_opt"))):
        if not _safe_security_opt(str(opt)):
            _refuse(f, f"{where}.security_opt[{i}]", f"{opt!r} loosens the container's confinement "
                    "(allowed: no-new-privileges, label=user|role|type|level:..., apparmor=PROFILE)")
    if _dig(spec, "deploy", "resources", "reservations", "devices"):
        _refuse(f, f"{where}.deploy.resources.reservations.devices", "gives the container host devices")
    for i, volume in enumerate(_as_list(spec.get("volumes"))):
        _mount(f, folder, f"{where}.volumes[{i}]", volume)
    for i, other in enumerate(_as_list(spec.get("volumes_from"))):
        if str(other).startswith("container:"):
            _refuse(f, f"{where}.volumes_from[{i}]", f"{other!r} is a container outside the lab")
    env_files = spec.get("env_file")
    for i, env in enumerate(_as_list(env_files)):
        path = env.get("path") if isinstance(env, dict) else env
        _inside(f, folder, f"{where}.env_file" + (f"[{i}]" if isinstance(env_files, list) else ""), path)
    for hook in ("post_start", "pre_stop"):
        for i, step in enumerate(_as_list(spec.get(hook))):
            if isinstance(step, dict) and step.get("privileged") not in (None, False):
                _refuse(f, f"{where}.{hook}[{i}].privileged", "runs the hook with every capability")
    extends = spec.get("extends")
    if isinstance(extends, dict) and extends.get("file") is not None:
        _refuse(f, f"{where}.extends.file", "brings in another compose file, which this check does not read")


def _mappings(raw) -> dict:
    """The entries of a section that are mappings (the loaders judge the section's shape)."""
    return {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}


def _dig(raw, *keys):
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def _as_list(raw) -> list:
    if raw is None:
        return []
    return raw if isinstance(raw, list) else [raw]


def _safe_security_opt(opt: str) -> bool:
    key, _, value = opt.replace(":", "=", 1).partition("=")
    if key == "no-new-privileges":
        return value in ("", "true")
    if key == "label":
        return value.split(":")[0] in ("user", "role", "type", "level")
    if key == "apparmor":
        return value not in ("", "unconfined")
    return False


def _mount(f, folder: _Paths, where: str, volume) -> None:
    if isinstance(volume, dict):
        kind = volume.get("type", "volume")
        if kind == "bind":
            _inside(f, folder, f"{where}.source", volume.get("source", ""))
        elif kind not in ("volume", "tmpfs"):
            _refuse(f, f"{where}.type", f"{kind!r} mounts something of the host")
        return
    source, sep, _ = str(volume).partition(":")
    if not sep:
        return  # an anonymous volume
    if source.startswith((".", "/", "~")) or "/" in source:
        _inside(f, folder, where, source)


def _network(f, where: str, spec: dict) -> None:
    _no_interpolation(f, where, {k: spec[k] for k in ("driver", "driver_opts", "external", "name") if k in spec})
    if spec.get("external"):
        _refuse(f, f"{where}.external", "a network that exists outside the lab can be the host's own")
    if spec.get("driver", "bridge") != "bridge":
        _refuse(f, f"{where}.driver", f"{spec['driver']!r} puts the lab on the host's network "
                "(only bridge networks are lab segments)")
    opts = spec.get("driver_opts") or {}
    if isinstance(opts, dict) and opts.get("com.docker.network.bridge.name") is not None:
        _refuse(f, f"{where}.driver_opts.com.docker.network.bridge.name",
                "may name an existing host bridge, which would join the lab to it")


def _volume(f, folder: _Paths, where: str, spec: dict) -> None:
    _no_interpolation(f, where, spec)
    if spec.get("external"):
        _refuse(f, f"{where}.external", "a volume that exists outside the lab can hold anything of the host")
    if spec.get("driver", "local") != "local":
        _refuse(f, f"{where}.driver", f"{spec['driver']!r} is not Docker's local volume driver")
    opts = spec.get("driver_opts") or {}
    if isinstance(opts, dict) and opts.get("device") is not None:
        _inside(f, folder, f"{where}.driver_opts.device", opts["device"])
