"""The probe agent without root (a live host reached as a plain user): no sniffer, so it
probes with connect() and ping sockets, says so, and refuses to capture.

Runs in a container with no network as user nobody; every probe goes to its loopback,
where a web server listens on 8000 and a UDP echo on 8001.
"""

import json
import subprocess
import sys
from pathlib import Path

from labwarden.probe.ship import agent_zipapp
from labwarden.realise.image import ensure_image

PROBE_DIR = Path(__file__).resolve().parents[2] / "labwarden" / "agent"
sys.path.insert(0, str(PROBE_DIR))
from agent import encode_request  # noqa: E402  (the agent is a standalone script)

SERVERS = ("python3 -m http.server 8000 -b 127.0.0.1 >/dev/null 2>&1 & "
           "python3 -c 'import socket; s = socket.socket(2, 2); s.bind((\"127.0.0.1\", 8001)); "
           "d, a = s.recvfrom(99); s.sendto(d, a)' & sleep 0.7; ")


def agent_as_nobody(nodes: dict) -> dict:
    request = encode_request({"timeout": 0.5, "allowed": [], "nodes": nodes})
    proc = subprocess.run(["docker", "run", "--rm", "-u", "nobody", "--network", "none",
                           "-v", f"{agent_zipapp()}:/agent.pyz:ro", "--entrypoint", "sh",
                           ensure_image(lambda m: None), "-c", SERVERS + f"python3 /agent.pyz {request}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["nodes"]


def test_without_root_the_agent_probes_with_sockets_and_says_so():
    probes = [{"id": 0, "proto": "tcp", "dst": "127.0.0.1", "port": 8000},
              {"id": 1, "proto": "tcp", "dst": "127.0.0.1", "port": 1},
              {"id": 2, "proto": "udp", "dst": "127.0.0.1", "port": 8001},
              {"id": 3, "proto": "udp", "dst": "127.0.0.1", "port": 9},
              {"id": 4, "proto": "icmp", "dst": "127.0.0.1"}]
    nodes = agent_as_nobody({"plain": {"netns": None, "probes": probes},
                             "capturing": {"netns": None, "capture": {"seconds": 0.2}}})
    plain = nodes["plain"]
    assert plain["error"] is None and plain["mode"] == "connect"
    verdicts = [(r["verdict"], r["by"]) for r in sorted(plain["results"], key=lambda r: r["id"])]
    assert verdicts == [("open", "127.0.0.1"), ("closed", "127.0.0.1"), ("open", "127.0.0.1"),
                        ("closed", "127.0.0.1"), ("open", "127.0.0.1")]
    assert all(r["rtt_ms"] is not None for r in plain["results"])
    assert "without root a router's forged answer looks the same" in plain["results"][1]["detail"]
    assert nodes["capturing"]["error"] == "node capturing: capturing needs root (CAP_NET_RAW)"
