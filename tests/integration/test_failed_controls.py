"""A node whose link is down proves nothing by its silence: every check that judges it
errors, none passes.

The lab comes up as usual; then, through the prober, the GPU VM's interface is set
down (a conftest beside copies of the suites wraps the session's `lab` fixture). Its
positive controls fail, and so every silence-based check that involves it must end in
ERROR: matrix cells, test_local_only, test_stateful, test_no_leak, discovery, snooping,
anti-spoofing, nat's test_outbound. On openwrt-homelab the GPU VM may reach nothing,
so its control is the router's capture: it sees nothing arrive either.
"""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = '''
import pytest


@pytest.fixture(scope="session")
def lab(lab):
    """The lab, with the GPU VM's only interface down (its namespace entered by the prober)."""
    iface = lab.topology.nodes["gpu"].interfaces[lab.topology.nodes["gpu"].segments[0]]
    done = lab.netns_exec("gpu", "ip", "link", "set", iface, "down")
    assert done.returncode == 0, done.stderr
    return lab
'''


def with_gpu_down(tmp_path, topology: str, *args: str) -> tuple[dict, str]:
    """Run suites (copies, with the conftest above) on the topology; their outcomes by test id."""
    for suite in ("isolation", "nat"):
        shutil.copytree(ROOT / "suites" / suite, tmp_path / "suites" / suite)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider", "--tb=line",
         "--rootdir", str(tmp_path), "--lw-topology", str(ROOT / "topologies" / topology),
         "--lw-report-dir", str(tmp_path / "report"), "--junitxml", str(tmp_path / "junit.xml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    return outcomes(tmp_path / "junit.xml"), out


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """{'file.py::test[id]': (passed|failed|error|skipped, message)}"""
    found = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("error", "failure", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (element.get("message") or "") + (element.text or "")
        found[name] = (outcome, message)
    return found


def test_a_node_with_its_link_down_errors_every_silence_based_check(tmp_path):
    results, out = with_gpu_down(tmp_path, "homelab", "suites/isolation", "suites/nat/test_outbound.py")
    gpu = {name: r for name, r in results.items() if "ai/gpu" in name}
    assert gpu, f"no test names ai/gpu: {sorted(results)[:20]}"
    passed = [name for name, (outcome, _) in gpu.items() if outcome == "passed"]
    assert not passed, f"checks of a node whose link is down passed: {passed}"
    must_error = [
        "test_matrix.py::test_cell[ai/gpu -> personal/laptop tcp/22]",        # its own silence
        "test_matrix.py::test_cell[servers/web -> ai/gpu tcp/22]",            # silence towards it
        "test_local_only.py::test_services_reach_only_whom_the_policy_names[ai/gpu]",
        "test_stateful.py::test_replies_pass_but_new_connections_do_not",
        "test_stateful.py::test_related_icmp_errors_come_back",
        "test_no_leak.py::test_nothing_outside_answers",
        "test_discovery.py::test_sweep_finds_nothing[ai/gpu -> servers]",
        "test_discovery.py::test_capture_sees_nothing[servers]",              # gpu listens there
        "test_antispoof.py::test_forged_sources_are_dropped",
        "test_outbound.py::test_inside_goes_out_masqueraded[ai/gpu]",
        "test_outbound.py::test_outside_cannot_address_inside_ranges",
    ]
    wrong = {name: results.get(name, ("missing", ""))[0] for name in must_error
             if results.get(name, ("missing", ""))[0] != "error"}
    assert not wrong, f"these should have errored: {wrong}\n{out[-3000:]}"
    cell = results["test_matrix.py::test_cell[ai/gpu -> personal/laptop tcp/22]"][1]
    assert "positive controls failed" in cell and "ai/gpu: ai/gpu -> wan/visitor icmp: expected open" in cell, cell
    # an answer that was due and did not come is a failure, controls or not
    assert results["test_matrix.py::test_cell[personal/laptop -> ai/gpu tcp/22]"][0] == "failed", out[-3000:]
    # nodes whose controls hold (none of them controls through the GPU VM) are still judged
    assert results["test_matrix.py::test_cell[servers/web -> wan/scanner tcp/22]"][0] == "passed"


def test_a_node_that_may_reach_nothing_is_controlled_by_the_routers_capture(tmp_path):
    results, out = with_gpu_down(tmp_path, "openwrt-homelab", "suites/isolation/test_matrix.py")
    gpu = {name: outcome for name, (outcome, _) in results.items() if "gpu/gpu" in name}
    assert gpu, out[-3000:]
    # everything gpu sends errors (it may reach nothing: each cell would pass by silence);
    # towards it, an answer due (lan may reach gpu) fails, and the router's own reject of
    # what other zones send it (blocked: reject) is an answer that still passes
    wrong = {name: outcome for name, outcome in gpu.items()
             if name.startswith("test_matrix.py::test_cell[gpu/gpu") and outcome != "error"}
    assert not wrong, f"cells of a node whose link is down did not error: {wrong}\n{out[-3000:]}"
    assert results["test_matrix.py::test_cell[lan/laptop -> gpu/gpu tcp/22]"][0] == "failed", out[-3000:]
    assert results["test_matrix.py::test_cell[servers/web -> gpu/gpu tcp/22]"][0] == "passed", out[-3000:]
    message = results["test_matrix.py::test_cell[gpu/gpu -> lan/laptop tcp/22]"][1]
    assert "gpu/gpu -> router@gpu icmp: expected seen" in message, message
    assert "the router's capture on gpu0 saw no packet from 198.19.30.10" in message, message
