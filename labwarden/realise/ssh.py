"""How live mode reaches a host: testinfra backends held to known host keys and time bounds.

- ``ssh://`` runs OpenSSH with ``StrictHostKeyChecking=yes`` and ``BatchMode=yes`` (an
  unknown or changed host key, or a prompt for a password, ends the connection);
  ``paramiko://`` uses a policy that rejects unknown keys and reads ``~/.ssh/known_hosts``
  and the ssh_config's ``UserKnownHostsFile``. A node with ``check_host_key: false`` in
  the inventory accepts any key (and remembers none).
- every remote command ends within a bound (`BOUND_S`, or the caller's ``timeout=``): the
  local ssh is killed, or paramiko's channel times out, and a `LabError` says which host.
- sudo is labwarden's, not testinfra's: the spec's ``?sudo=true`` runs only the agent as
  root (``sudo -n python3 AGENT -``, the request on stdin: labwarden.probe's Transport.sudo), so sudoers can allow
  exactly that; pushing and removing the agent run as the login user.

Hosts are shown through `masked` (labwarden.declared.hostspec): never with a password.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from dataclasses import dataclass

import testinfra.backend
import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult
from testinfra.backend.local import LocalBackend
from testinfra.backend.ssh import SshBackend

from labwarden.declared.hostspec import masked
from labwarden.errors import LabError

BOUND_S = 600.0     # any remote command, unless its caller gives a tighter timeout=
CONNECT_S = 20      # establishing a connection
CHECKED = "-o StrictHostKeyChecking=yes -o BatchMode=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3"
UNCHECKED = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
             "-o ServerAliveInterval=10 -o ServerAliveCountMax=3")


def _bounded(backend: BaseBackend, shown: str, command: str, args, timeout: float,
             stdin: bytes | None = None) -> CommandResult:
    """testinfra's run_local, with a time limit: the local process is killed past it. `stdin`,
    if given, is the command's standard input (ssh carries it to the remote command)."""
    cmd = backend.encode(backend.quote(command, *args))
    proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and what it started (ssh, sshpass)
        proc.communicate()
        raise LabError(f"{shown}: no answer within {timeout:g} s: the command was stopped") from None
    return backend.result(proc.returncode, cmd, stdout, stderr)


class BoundedSsh(SshBackend):
    TAKES_TIMEOUT = True  # labwarden.probe.bound hands each agent call its batch's bound
    """OpenSSH, host keys checked (unless opted out), every command bounded."""

    def __init__(self, hostspec, check_host_key: bool = True, shown: str = "", **kwargs):
        kwargs.setdefault("timeout", CONNECT_S)
        super().__init__(hostspec, ssh_extra_args=CHECKED if check_host_key else UNCHECKED, **kwargs)
        self.shown = shown or f"ssh://{self.host.name}"

    def run(self, command: str, *args: str, timeout: float | None = None, stdin: bytes | None = None,
            **kwargs) -> CommandResult:
        full = self.get_command(command, *args)
        cmd, cmd_args = self._build_ssh_command(full)
        out = _bounded(self, self.shown, " ".join(cmd), cmd_args, timeout or BOUND_S, stdin)
        if out.rc == 255:  # ssh's own failure: unreachable, refused, unknown host key
            raise LabError(f"{self.shown}: ssh failed: {out.stderr.strip()[-600:]}")
        return out


class BoundedLocal(LocalBackend):
    TAKES_TIMEOUT = True
    def run(self, command: str, *args: str, timeout: float | None = None, stdin: bytes | None = None,
            **kwargs) -> CommandResult:
        return _bounded(self, "local://", self.get_command(command, *args), (), timeout or BOUND_S, stdin)


def _paramiko_backend():
    """The paramiko backend class, defined only when paramiko is installed (it is optional)."""
    import paramiko
    from testinfra.backend.paramiko import IgnorePolicy, ParamikoBackend

    class CheckedParamiko(ParamikoBackend):
        """paramiko with a RejectPolicy and the known_hosts files; commands bounded."""
        TAKES_TIMEOUT = True

        def __init__(self, hostspec, check_host_key: bool = True, shown: str = "", **kwargs):
            kwargs.setdefault("timeout", CONNECT_S)
            super().__init__(hostspec, **kwargs)
            self.check_host_key, self.shown = check_host_key, shown or f"paramiko://{self.host.name}"
            self.bound_s = BOUND_S

        @functools.cached_property
        def client(self) -> paramiko.SSHClient:
            client = paramiko.SSHClient()
            cfg = {"hostname": self.host.name, "port": int(self.host.port) if self.host.port else 22,
                   "username": self.host.user, "timeout": self.timeout, "banner_timeout": self.timeout,
                   "auth_timeout": self.timeout, "password": self.host.password,
                   "allow_agent": True, "look_for_keys": self.host.password is None}
            known = [os.path.expanduser("~/.ssh/known_hosts")]
            if self.ssh_config:
                config = paramiko.SSHConfig.from_path(self.ssh_config)
                self._load_ssh_config(client, cfg, config, os.path.dirname(self.ssh_config))
                known += [os.path.expanduser(p) for p in
                          config.lookup(self.host.name).get("userknownhostsfile", "").split()]
            if self.check_host_key:  # after the ssh_config: its StrictHostKeyChecking no does not count
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
                for path in known:
                    if os.path.isfile(path):
                        client.get_host_keys().load(path)
            else:
                client.set_missing_host_key_policy(IgnorePolicy())
            if self.ssh_identity_file:
                cfg["key_filename"] = self.ssh_identity_file
            try:
                client.connect(**cfg)
            except paramiko.SSHException as err:  # the message names the host, never the password
                raise LabError(f"{self.shown}: {err}") from None
            return client

        def run(self, command: str, *args: str, timeout: float | None = None, stdin: bytes | None = None,
                **kwargs) -> CommandResult:
            cmd = self.encode(self.get_command(command, *args))
            chan = self.client.get_transport().open_session(timeout=self.timeout)
            chan.settimeout(timeout or self.bound_s)
            try:
                chan.exec_command(cmd)
                if stdin is not None:  # the request, then end of file: the agent reads to the end
                    chan.sendall(stdin)
                chan.shutdown_write()
                stdout = b"".join(chan.makefile("rb"))
                stderr = b"".join(chan.makefile_stderr("rb"))
                rc = chan.recv_exit_status()
            except TimeoutError:
                chan.close()
                raise LabError(f"{self.shown}: no answer within {timeout or self.bound_s:g} s: "
                               "the command was stopped") from None
            return self.result(rc, cmd, stdout, stderr)

    return CheckedParamiko


@dataclass
class LiveHost:
    """A live node's connection: the testinfra host (as the login user), and whether the
    agent runs through sudo."""
    host: testinfra.host.Host
    sudo: bool
    shown: str


def connect(spec: str, check_host_key: bool = True, ssh_config: str | None = None,
            controlpath: str | None = None) -> LiveHost:
    """A testinfra host for a checked spec (labwarden.declared.hostspec.parse_spec)."""
    shown = masked(spec)
    name, kw = testinfra.backend.parse_hostspec(spec)
    sudo = bool(kw.pop("sudo", False))
    scheme = kw.pop("connection")
    if ssh_config and scheme != "local":
        kw["ssh_config"] = ssh_config
    if scheme == "ssh":
        if controlpath:
            kw["controlpath"] = controlpath
        backend = BoundedSsh(name, check_host_key=check_host_key, shown=shown, **kw)
    elif scheme == "paramiko":
        try:
            klass = _paramiko_backend()
        except ImportError:
            raise LabError(f"{shown}: paramiko:// needs the paramiko package (pip install paramiko)") from None
        backend = klass(name, check_host_key=check_host_key, shown=shown, **kw)
    else:
        backend = BoundedLocal(**kw)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return LiveHost(host, sudo, shown)
