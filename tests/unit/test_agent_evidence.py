"""No evidence is lost silently (issue 9, item 4): what a probe's socket saw when the sniffer
missed it, and a capture that lost frames. The agent is a standalone script; its verdict
logic runs here in this process's own namespace, with no packet sent."""

import errno
import os
import sys
from pathlib import Path

import pytest

from labwarden.errors import CaptureIncomplete
from labwarden.probe import NodeJob, _node_answers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import agent  # noqa: E402


@pytest.fixture
def book():
    r, w = os.pipe()
    book = agent.Book([], w)
    book.onlink, book.near, book.local = [agent.ipaddress.ip_network("198.18.1.0/24")], set(), {"198.18.1.10"}
    yield book
    os.close(r), os.close(w)


def fallback(book, dst, saw, icmp=None):
    probe = agent.Probe({"id": 0, "proto": "tcp", "dst": dst, "port": 22}, 1.0)
    probe.socket_saw, probe.socket_icmp, probe.sent = saw, icmp, 1.0
    book.pending += 1
    agent.TcpProber().fallback(probe, book)
    return probe.result


def test_a_refusal_the_sniffer_missed_is_an_answer_never_filtered(book):
    onlink = fallback(book, "198.18.1.20", errno.ECONNREFUSED)
    assert (onlink["verdict"], onlink["by"]) == ("closed", "198.18.1.20")
    assert "the sniffer missed it" in onlink["detail"]
    offlink = fallback(book, "198.18.10.10", errno.ECONNREFUSED)  # dst's RST or a router's forgery
    assert offlink["verdict"] == "error" and "forged by a router" in offlink["detail"]
    icmp = fallback(book, "198.18.10.10", errno.EHOSTUNREACH, (3, 13, "198.18.1.1"))
    assert (icmp["verdict"], icmp["by"]) == ("rejected", "198.18.1.1")
    assert icmp["detail"] == ("ICMP admin-prohibited from 198.18.1.1 (read from the socket's error queue; "
                              "the sniffer missed it)")
    other = fallback(book, "198.18.10.10", errno.ENETUNREACH)
    assert other["verdict"] == "rejected" and "the sniffer missed it" in other["detail"]


def test_a_capture_that_lost_frames_cannot_be_read():
    raw = {"error": None, "results": [], "captured": [{"iface": "eth0", "dir": "in", "hex": "00"}] * 3,
           "capture_truncated": 7, "sniffer_drops": 2}
    answer = _node_answers({"web": NodeJob(capture_s=1.0)}, {"web": raw})["web"]
    with pytest.raises(CaptureIncomplete) as caught:
        answer.captured
    assert str(caught.value).startswith("node web: its capture is incomplete (7 frame(s) beyond the 3 the "
                                        "agent keeps (MAX_FRAMES) were not kept")
    assert "the kernel dropped 2 frame(s) for the sniffer" in str(caught.value)
    whole = _node_answers({"web": NodeJob(capture_s=1.0)}, {"web": dict(raw, capture_truncated=0, sniffer_drops=0)})
    assert len(whole["web"].captured) == 3


def test_drops_turn_silence_into_an_error():
    silent, refused, answered = (agent.Probe({"id": i, "proto": "tcp", "dst": "198.18.1.20", "port": 22}, 1.0)
                                 for i in range(3))
    silent.settle("filtered")
    refused.settle("filtered", detail="not sent: dropped by this node's own firewall (EPERM)")
    answered.settle("closed", "198.18.1.20", detail="RST from 198.18.1.20 (ttl 64)")
    agent.unprove_silences([silent, refused, answered], 4)
    assert silent.result["verdict"] == "error"
    assert silent.result["detail"] == ("no answer within 1.0 s, but the kernel dropped 4 frame(s) for this "
                                       "node's sniffer: the answer may be one of them")
    assert refused.result["verdict"] == "filtered" and answered.result["verdict"] == "closed"
