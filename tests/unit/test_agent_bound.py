"""Every agent call is bounded by its batch (labwarden.probe.bound), and killed at the bound."""

import subprocess
import threading
import time
from ipaddress import IPv4Address

import pytest
import testinfra

from labwarden.errors import ProbeError
from labwarden.probe import NodeJob, Probe, Transport, _call_agent
from labwarden.probe.bound import MARGIN_S, SETUP_S, agent_bound, node_seconds, run_bounded, stop_calls


def test_probes_cost_the_timeout_and_the_catch_up():
    request = {"timeout": 3.0, "nodes": {"a": {"probes": [{"id": 0}]}}}
    assert agent_bound(request) == MARGIN_S + 3.0 + 3.0
    request["timeout"] = 0.5
    assert agent_bound(request) == MARGIN_S + 0.5 + 2.0  # the sniffer catches up for 2 s at least


def test_nodes_run_at_once_rounds_one_after_the_other():
    slow, fast = {"capture": {"seconds": 9.0}}, {"capture": {"seconds": 1.0}}
    assert agent_bound({"nodes": {"a": slow, "b": fast}}) == MARGIN_S + 9.0
    rounds = {"rounds": [{"nodes": {"a": slow}}, {"nodes": {"b": fast}}, {"nodes": {}}]}
    assert agent_bound(rounds) == MARGIN_S + 9.0 + 1.0


def test_every_kind_of_work_counts():
    assert node_seconds({"setup": {"nft": "x"}}, 1.0) == SETUP_S
    assert node_seconds({"fetch": [{"read_s": 5.0}, {}]}, 1.0) == 1.0 + 5.0
    assert node_seconds({"latency": [{"count": 10, "interval_s": 0.1, "timeout_s": 2.0}]}, 1.0) == \
        pytest.approx(10 * 0.1 + 2.0)
    assert node_seconds({"latency": [{"count": 10, "interval_s": 0.1, "timeout_s": 2.0, "serial": True}]},
                        1.0) == pytest.approx(10 * 2.1)
    assert node_seconds({"traceroute": [{"queries": 3, "timeout_s": 2.0}]}, 1.0) == 6.0
    assert node_seconds({"start_at": 110.0, "probes": [{}]}, 1.0, now=100.0) == 10.0 + 1.0 + 2.0
    # a capture window runs beside the probes: the longer of the two
    assert node_seconds({"capture": {"seconds": 4.0}, "probes": [{}]}, 1.0) == 4.0


def test_a_pace_counts_every_packet():
    item = {"probes": [{}] * 200, "send": [{}] * 100}
    assert agent_bound({"timeout": 1.0, "max_pps": 100, "nodes": {"a": item}}) == MARGIN_S + 3.0 + 3.0


def test_a_call_over_its_bound_is_killed_and_named():
    host = testinfra.get_host("local://")
    started = time.monotonic()
    with pytest.raises(ProbeError, match=r"local://x did not answer within 1 s"):
        run_bounded(host, 1.0, "local://x", "sleep 37.123")
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", "sleep 37.123"], capture_output=True, text=True).stdout
    assert left == ""  # the command was killed, not abandoned
    assert run_bounded(host, 5.0, "local://x", "echo %s", "ok").stdout == "ok\n"  # the host still works


def test_a_stalled_agent_is_a_probe_error(monkeypatch, tmp_path):
    """The agent call itself: a stalled 'agent' (it sleeps) fails at the batch's bound."""
    stalled = tmp_path / "agent.py"
    stalled.write_text("import time; time.sleep(60)\n")
    monkeypatch.setattr("labwarden.probe.agent_bound", lambda request: 1.0)
    transport = Transport(testinfra.get_host("local://"), None, str(stalled))
    job = NodeJob(probes=[Probe("tcp", IPv4Address("127.0.0.1"), 1)])
    started = time.monotonic()
    with pytest.raises(ProbeError, match=r"node lab-node\) did not answer within 1 s"):
        _call_agent(transport, {"timeout": 1.0, "nodes": {"lab-node": job.request(None)}})
    assert time.monotonic() - started < 5


def test_sigterm_stops_the_calls_in_flight():
    """On SIGTERM (labwarden.realise.cleanup.sigterm_interrupts) no batch is waited for."""
    host, box = testinfra.get_host("local://"), {}
    worker = threading.Thread(target=lambda: box.update(r=run_bounded(host, 60.0, "x", "sleep 38.5")))
    worker.start()
    time.sleep(0.5)
    started = time.monotonic()
    stop_calls()
    worker.join(10)
    assert time.monotonic() - started < 5 and box["r"].rc != 0
