"""`labwarden init NAME --openwrt BACKUP [--ruleset FILE]` | `--from-router HOSTSPEC`: a lab folder
drafted from a router's own configuration (labwarden.declared.openwrt and
labwarden.declared.linux_router say what is drafted and how)."""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from ipaddress import IPv4Network
from pathlib import Path

import testinfra

from labwarden.errors import ConfigError
from labwarden.declared.fields import MAX_BYTES, read_text
from labwarden.declared.hostspec import masked, parse_spec
from labwarden.declared.linux_router import draft_from_router, ruleset_from_router
from labwarden.declared.openwrt import draft
from labwarden.declared.openwrt_files import compose_text, policy_text, ruleset_text
from labwarden.declared.uci import parse_uci

_LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
CONFIGS = ("etc/config/network", "etc/config/firewall")
HELP = """\
examples:
  labwarden init myhome --openwrt backup-OpenWrt-2026-11-30.tar.gz --ruleset ruleset.nft
  labwarden init example --openwrt examples/openwrt-backup      (a folder: etc/config/..., ruleset.nft)
  labwarden init myhome --from-router 'ssh://root@192.168.1.1'   (reads ip -j addr/route, nft list ruleset)
  pytest suites/isolation --lw-topology topologies/myhome

BACKUP is what LuCI's System > Backup / Flash Firmware > "Generate archive" downloads, or a
folder holding etc/config/network and etc/config/firewall. FILE is the ruleset firewall4
renders from them, saved on the router with `fw4 print > /tmp/ruleset.nft` (then
`scp root@192.168.1.1:/tmp/ruleset.nft .`); a ruleset.nft inside BACKUP is used when
--ruleset is not given. Nothing is sent to the router: these are files you copied.
"""


def _member(tar: tarfile.TarFile, archive: str, path: str) -> str | None:
    for name in (path, "./" + path):
        try:
            info = tar.getmember(name)
        except KeyError:
            continue
        if not info.isfile():
            raise ConfigError(archive, path, "is not a regular file in the archive")
        if info.size > MAX_BYTES:
            raise ConfigError(archive, path, f"is bigger than {MAX_BYTES // 1024} KiB: not a config file")
        data = tar.extractfile(info).read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(archive, path, "is not UTF-8 text") from None
    return None


def read_backup(backup: Path, ruleset: Path | None) -> tuple[dict[str, str], str, str]:
    """The backup's network and firewall configs (path -> text), the ruleset's text and its
    origin; nothing is extracted to disk."""
    texts: dict[str, str] = {}
    rules_text = None
    origin = str(ruleset) if ruleset else None
    if backup.is_dir():
        for path in CONFIGS:
            if (backup / path).is_file():
                texts[path] = read_text(backup / path, str(backup / path))
        if ruleset is None and (backup / "ruleset.nft").is_file():
            ruleset, origin = backup / "ruleset.nft", str(backup / "ruleset.nft")
    elif backup.is_file():
        try:
            with tarfile.open(backup, "r:*") as tar:
                for path in CONFIGS:
                    text = _member(tar, str(backup), path)
                    if text is not None:
                        texts[path] = text
                if ruleset is None:
                    rules_text = _member(tar, str(backup), "ruleset.nft")
                    origin = f"{backup}:ruleset.nft"
        except tarfile.TarError as err:
            raise ConfigError(backup, "--openwrt", f"not a backup archive (tar.gz) or folder: {err}") from None
    else:
        raise ConfigError(backup, "--openwrt", "no such file or folder")
    for path in CONFIGS:
        if path not in texts:
            raise ConfigError(backup, path, "missing: a backup holds etc/config/network and etc/config/firewall")
    if ruleset is not None:
        if not ruleset.is_file():
            raise ConfigError(ruleset, "--ruleset", "no such file")
        rules_text = read_text(ruleset, str(ruleset), "--ruleset")
    if rules_text is None:
        raise ConfigError(backup, "--ruleset", "missing: save firewall4's rendered ruleset on the router "
                          "(`fw4 print > /tmp/ruleset.nft`) and pass it with --ruleset FILE")
    if "table inet fw4" not in rules_text:
        raise ConfigError(origin, "--ruleset", "not a firewall4 ruleset (no `table inet fw4`): "
                          "give the output of `fw4 print`")
    return texts, rules_text, origin


def init_lab(name: str, backup: Path, ruleset: Path | None, into: Path, wan_subnet: IPv4Network,
             force: bool = False) -> Path:
    """Write INTO/NAME/ (compose.yaml, policy.yaml, router/ruleset.nft); returns the folder."""
    folder = _folder(name, into, force)
    texts, rules, origin = read_backup(backup, ruleset)
    network = parse_uci(texts[CONFIGS[0]], f"{backup}/{CONFIGS[0]}")
    firewall = parse_uci(texts[CONFIGS[1]], f"{backup}/{CONFIGS[1]}")
    lab = draft(network, firewall, wan_subnet)
    source = f"{backup} (etc/config/network, etc/config/firewall)"
    return _write(folder, lab, name, source, ruleset_text(lab, rules, origin))


def _subnet(text: str) -> IPv4Network:
    try:
        net = IPv4Network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 prefix, e.g. 10.29.0.0/24") from None
    if net.num_addresses < 32:
        raise argparse.ArgumentTypeError(f"{text}: the wan needs at least a /27")
    return net


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="draft a lab (compose.yaml, policy.yaml, router config) from your router's config",
                       epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="the lab's name: topologies/NAME is written")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--openwrt", metavar="BACKUP", type=Path,
                        help="an OpenWrt backup (tar.gz) or a folder with etc/config/{network,firewall}")
    source.add_argument("--from-router", metavar="HOSTSPEC",
                        help="a running Linux router (ssh://root@192.168.1.1, paramiko://..., local://), read only")
    p.add_argument("--ruleset", metavar="FILE", type=Path, default=None,
                   help="firewall4's rendered ruleset (`fw4 print` on the router)")
    p.add_argument("--wan-subnet", type=_subnet, default=IPv4Network("10.29.0.0/24"),
                   help="the lab's stand-in for the ISP's network when wan gets its address by DHCP/PPPoE "
                        "(default 10.29.0.0/24)")
    p.add_argument("--into", type=Path, default=Path("topologies"), help="where NAME/ is written (default topologies)")
    p.add_argument("--force", action="store_true", help="replace the files of an existing NAME/")
    p.set_defaults(func=cmd_init)


def router_outputs(spec: str) -> tuple[list, list, dict, str]:
    """`ip -j addr`, `ip -j route`, `nft -j list ruleset` and `nft list ruleset` of a router,
    read over testinfra; nothing on the router is changed."""
    parse_spec("--from-router", "HOSTSPEC", spec)
    host = testinfra.get_host(spec)
    outputs = []
    for command in ("ip -j addr", "ip -j route", "nft -j list ruleset", "nft list ruleset"):
        result = host.run(command)
        if result.rc != 0:
            raise ConfigError(masked(spec), "--from-router", f"`{command}` failed (exit {result.rc}): "
                              f"{result.stderr.strip()[:200]} (nft needs root: add ?sudo=true or log in as root)")
        outputs.append(result.stdout)
    try:
        return json.loads(outputs[0]), json.loads(outputs[1]), json.loads(outputs[2]), outputs[3]
    except ValueError as err:
        raise ConfigError(masked(spec), "--from-router", f"a command's output is not JSON: {err}") from None


def init_from_router(name: str, outputs: tuple, origin: str, into: Path, wan_subnet: IPv4Network,
                     force: bool = False) -> Path:
    folder = _folder(name, into, force)
    addr, route, rules_json, rules_text = outputs
    lab = draft_from_router(addr, route, rules_json, wan_subnet, origin)
    return _write(folder, lab, name, origin, ruleset_from_router(lab, rules_text, addr, origin))


def _folder(name: str, into: Path, force: bool) -> Path:
    if not _LAB_NAME.match(name):
        raise ConfigError(name, "NAME", "use lower-case letters, digits and '-' (it names a folder and a "
                          "Compose project)")
    folder = into / name
    if folder.exists() and not force:
        raise ConfigError(folder, "NAME", "already exists: pick another name or pass --force to replace its files")
    return folder


def _write(folder: Path, lab, name: str, source: str, ruleset: str) -> Path:
    (folder / "router").mkdir(parents=True, exist_ok=True)
    (folder / "compose.yaml").write_text(compose_text(lab, name, source))
    (folder / "policy.yaml").write_text(policy_text(lab, name, source))
    (folder / "router" / "ruleset.nft").write_text(ruleset)
    return folder


def cmd_init(args) -> int:
    if args.from_router is not None:
        folder = init_from_router(args.name, router_outputs(args.from_router), masked(args.from_router),
                                  args.into, args.wan_subnet, args.force)
    else:
        folder = init_lab(args.name, args.openwrt, args.ruleset, args.into, args.wan_subnet, args.force)
    policy = (folder / "policy.yaml").read_text()
    reviews = [line.strip() for line in policy.splitlines() if "REVIEW:" in line]
    print(f"wrote {folder}/compose.yaml, policy.yaml, router/ruleset.nft")
    if reviews:
        print(f"{len(reviews)} entries of policy.yaml are marked for review:")
        for line in reviews:
            print("  " + line.lstrip("# "))
    print(f"next: pytest suites/isolation --lw-topology {folder}")
    return 0
