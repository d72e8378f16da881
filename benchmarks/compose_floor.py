"""Compose's floor on this engine: how long `up -d` takes for a lab's networks and
containers alone. Prints figures; asserts nothing.

    python benchmarks/compose_floor.py [--topology homelab] [--runs 3] [--sysctls] [--json]

The lab's compose file, as Compose reads it, stripped to its bones: the same networks
(driver and options; subnets moved to 10.199.N.0/24, so it runs beside the real lab
and needs no lab lock) and the same containers on them at the same host numbers (plus
a stand-in for labwarden's prober, `network_mode: none`), each running
`sleep infinity` from labwarden's node image: no services, no volumes, no plumbing.
`--sysctls` keeps each node's sysctls (the runtime writes them at start). Each run is
`up -d --no-build --quiet-pull --remove-orphans` (what ComposeLab.up runs), timed,
then `down`. What `up` takes beyond this floor is labwarden's, or the lab's own
services'; `benchmarks/matrix.py` prints `up_compose_s` for the real lab.
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labwarden.declared.lab import load_lab  # noqa: E402
from labwarden.realise.compose import compose_command  # noqa: E402
from labwarden.realise.image import ensure_image  # noqa: E402


def bare(config: dict, image: str, keep_sysctls: bool) -> dict:
    """The compose document of the lab's networks and containers only (see the docstring)."""
    moved: dict[str, tuple] = {}
    networks = {}
    for i, (name, net) in enumerate(sorted(config["networks"].items())):
        old = ipaddress.ip_network(net["ipam"]["config"][0]["subnet"])
        new = ipaddress.ip_network(f"10.199.{i}.0/{max(old.prefixlen, 16)}", strict=False)
        moved[name] = (old, new)
        gateway = net["ipam"]["config"][0].get("gateway")
        ipam = {"subnet": str(new)}
        if gateway:
            ipam["gateway"] = str(new.network_address + (int(ipaddress.ip_address(gateway)) - int(old.network_address)))
        networks[name] = {"driver": net.get("driver", "bridge"), "driver_opts": net.get("driver_opts", {}),
                          "ipam": {"config": [ipam]}}
    services = {}
    for name, svc in config["services"].items():
        out = {"image": image, "entrypoint": ["sleep", "infinity"], "stop_grace_period": "1s"}
        if "network_mode" in svc:
            out["network_mode"] = svc["network_mode"]
        else:
            out["networks"] = {}
            for net, opts in (svc.get("networks") or {}).items():
                old, new = moved[net]
                address = (opts or {}).get("ipv4_address")
                out["networks"][net] = {"ipv4_address": str(new.network_address + (
                    int(ipaddress.ip_address(address)) - int(old.network_address)))} if address else {}
        if keep_sysctls and svc.get("sysctls"):
            out["sysctls"] = svc["sysctls"]
        services[name] = out
    services["labwarden-prober"] = {"image": image, "entrypoint": ["sleep", "infinity"],
                                    "network_mode": "none", "stop_grace_period": "1s"}
    return {"networks": networks, "services": services}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default="homelab")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sysctls", action="store_true", help="keep each node's sysctls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    topology, _ = load_lab(args.topology)  # the lab's compose file is read as Compose reads it below
    image = ensure_image()
    compose = compose_command()
    env = dict(os.environ, LABWARDEN_IMAGE=image)
    config = json.loads(subprocess.run([*compose, "-f", str(topology.compose_file), "config", "--format", "json"],
                                       capture_output=True, text=True, check=True, env=env).stdout)
    figures = {"topology": topology.name, "networks": len(config["networks"]),
               "containers": len(config["services"]) + 1, "sysctls": args.sysctls, "up_s": [], "down_s": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compose.yaml"
        path.write_text(json.dumps(bare(config, image, args.sysctls)))
        cmd = [*compose, "--project-name", f"lw-floor-{os.getpid()}", "--file", str(path)]
        try:
            for _ in range(args.runs):
                started = time.monotonic()
                subprocess.run([*cmd, "up", "-d", "--no-build", "--quiet-pull", "--remove-orphans"],
                               capture_output=True, text=True, check=True)
                figures["up_s"].append(round(time.monotonic() - started, 3))
                started = time.monotonic()
                subprocess.run([*cmd, "down", "--volumes", "--timeout", "1"], capture_output=True, check=True)
                figures["down_s"].append(round(time.monotonic() - started, 3))
        finally:
            subprocess.run([*cmd, "down", "--volumes", "--timeout", "1"], capture_output=True)
    figures["load_average"] = os.getloadavg()[0]
    for key, value in figures.items():
        print(f"{key:>14}: {value}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
