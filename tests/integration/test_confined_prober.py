"""The lab under a prober confined as Docker's AppArmor profile confines it on Ubuntu and
GitHub's runners: no mount of any kind (so its read-only /proc/sys stays read-only) and no
unshare. This machine has no AppArmor, so a seccomp profile stands in for the two denials
that mattered (the old sysctl fallback remounted /proc/sys from `unshare -m`): with it the
lab comes up, the delay line is applied and read back, and every node has the sysctls
labwarden adds, set by the runtime through the compose override (labwarden.realise.sysctls).
What AppArmor would deny besides (ptrace of peers not under docker-default, writes under
/proc and /sys) is not imitated here: see the README's "AppArmor".
"""

import asyncio
import json
from pathlib import Path

import pytest

from labwarden.checks import latency
from labwarden.declared.lab import load_lab
from labwarden.realise import impair, sysctls
from labwarden.realise.compose import PROBER, ComposeLab

pytestmark = pytest.mark.lab
LAB = Path(__file__).resolve().parent / "latency_lab"  # a delay line carried by a router (sat)
DENIED = ["mount", "umount2", "unshare", "pivot_root", "fsopen", "fsmount", "move_mount", "open_tree",
          "fsconfig", "mount_setattr"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    profile = tmp_path_factory.mktemp("seccomp") / "no-mounts.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                   "syscalls": [{"names": DENIED, "action": "SCMP_ACT_ERRNO"}]}))
    instance = ComposeLab(*load_lab(LAB), log=lambda *a: None, impair="delayline",
                          prober_options={"security_opt": [f"seccomp={profile}"]})
    with instance:
        yield instance


def test_the_prober_can_neither_mount_nor_write_proc_sys(lab):
    assert any(o.startswith("seccomp=") for o in lab.containers[PROBER].attrs["HostConfig"]["SecurityOpt"])
    remount = lab.prober_exec("mount", "-o", "remount,rw", "/proc/sys")
    assert remount.returncode != 0
    assert lab.prober_exec("unshare", "-m", "true").returncode != 0
    write = lab.netns_exec("sat", "sh", "-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_every_node_has_its_sysctls_from_the_runtime(lab):
    wanted = sysctls.wanted(lab.topology, "delayline")
    assert wanted and "sat" in wanted
    for node, keys in wanted.items():
        for key, value in keys.items():
            got = lab.netns_exec(node, "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()
            assert got == value, (node, key)
    for node, own in ((n, lab.topology.nodes[n].sysctls) for n in lab.topology.nodes):
        for key, value in own.items():  # the lab's own keys, kept
            assert lab.netns_exec(node, "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip() == value


def test_the_delay_line_runs_and_reads_back(lab):
    imp = lab.impairment
    assert imp.method == "delayline" and list(imp.carriers) == ["sat"]
    back = imp.readback["sat"]["readback"]
    assert impair.verify_delayline(imp.readback["sat"]["links"], back) == []
    for tun in ("lwd0o", "lwd0i", "lwd0j"):  # set over netlink, read back from /proc/sys
        assert back["sysctls"][f"net.ipv4.conf.{tun}.forwarding"] == "1"
        assert back["sysctls"][f"net.ipv4.conf.{tun}.rp_filter"] == "0"
    links = imp.links
    check = latency.link_check(lab.topology, links, links[0], impair.firewalled_nodes(lab))
    samples = asyncio.run(latency.ping(lab, [(check.src, check.dst)], count=10, interval_s=check.interval_s))
    rtts = [s for s in samples[(check.src, check.dst)] if s is not None]
    profile = links[0].profile
    assert len(rtts) >= 8 and min(rtts) >= 2 * (profile.delay_ms - profile.jitter_ms) - 1  # through the relay
