"""Where the lab drawing (`labwarden.report.drawing`) puts every segment and node.

Two layouts of the same boxes: *wide* (segments in a row, the router and other hops
in a row above them; for screens from a laptop's up) and *narrow* (segments stacked,
hops in a column on their left, each listing its addresses; for a phone). Nodes on
one segment only sit inside its box; a segment comes in the order a walk from the
router meets it, so a chain of hops (cabin, satellite, ground) stays a chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network

NODE_H, NODE_GAP, SEG_PAD, SEG_HEAD, IMPAIR_LINE = 40, 8, 15, 50, 16
HOP_H, TOP = 40, 14
# wide: a row of segments below a row of hops
NODE_W, SEG_W, SEG_GAP, HOP_W, HOP_GAP, HOP_TO_SEG, MARGIN = 156, 186, 70, 156, 24, 74, 36
# narrow: a column of segments right of a column of hops
N_NODE_W, N_SEG_W, N_SEG_GAP, N_HOP_W, N_WIRE, N_MARGIN, N_LOOPS = 148, 172, 22, 118, 38, 8, 36
HOP_LINE = 15  # a narrow hop's box: its name, then one line per address


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


def impairment_lines(link: dict) -> list[str]:
    """An impaired segment's tag, short enough for a narrow box: its profile, what it does."""
    delay = f"{link.get('delay_ms', 0):g} ms"
    if link.get("jitter_ms"):
        delay += f" ±{link['jitter_ms']:g}"
    lines = [f"{link.get('profile') or 'impaired'}:", delay + " each way"]
    if link.get("loss_pct"):
        lines.append(f"{link['loss_pct']:g}% loss each way")
    return lines


def order(segments: list[str], hops: list[dict], router: str) -> list[str]:
    """Segments in the order a walk from the router meets them (a chain of hops stays a chain)."""
    seen: list[str] = []
    todo = [h for h in hops if h["name"] == router] + [h for h in hops if h["name"] != router]
    frontier = [todo[0]] if todo else []
    done = set()
    while frontier or len(done) < len(todo):
        if not frontier:
            frontier = [next(h for h in todo if h["name"] not in done)]
        hop = frontier.pop(0)
        if hop["name"] in done:
            continue
        done.add(hop["name"])
        for seg in hop["addresses"]:
            if seg in segments and seg not in seen:
                seen.append(seg)
                frontier += [h for h in todo if seg in h["addresses"] and h["name"] not in done]
    return seen + [s for s in segments if s not in seen]


class Layout:
    """Where every segment and node stands, wide or narrow."""

    def __init__(self, lab: dict, narrow: bool = False):
        self.lab, self.narrow = lab, narrow
        self.router = lab.get("router")
        nodes = lab.get("nodes", [])
        self.hops = [n for n in nodes if len(n.get("addresses", {})) != 1 or n["name"] == self.router]
        self.hops.sort(key=lambda n: n["name"] != self.router)
        self.segments = {s["name"]: s for s in lab.get("segments", [])}
        self.order = order(list(self.segments), self.hops, self.router)
        self.members = {seg: [n for n in nodes if n not in self.hops and seg in n["addresses"]]
                        for seg in self.order}
        self.impaired = {}  # segment -> its link; (node, segment) -> the attachment's
        for link in lab.get("links", []):
            self.impaired[(link.get("node"), link["segment"]) if link.get("node") else link["segment"]] = link
        self.seg_box: dict[str, Box] = {}
        self.node_box: dict[str, Box] = {}
        (self._narrow if narrow else self._wide)()
        self.hop_boxes = {id(self.node_box[h["label"]]) for h in self.hops}
        self.bottom = max([b.y + b.h for b in [*self.seg_box.values(), *self.node_box.values()]] + [TOP + HOP_H])

    def head(self, seg: str) -> float:
        return SEG_HEAD + (IMPAIR_LINE * len(impairment_lines(self.impaired[seg])) + 2 if seg in self.impaired else 0)

    def _segment_height(self, seg: str) -> float:
        rows = len(self.members[seg])
        return self.head(seg) + rows * (NODE_H + NODE_GAP) + (SEG_PAD - NODE_GAP if rows else 0)

    def _members(self, node_w: float) -> None:
        for seg in self.order:
            box = self.seg_box[seg]
            for j, node in enumerate(self.members[seg]):
                self.node_box[node["label"]] = Box(box.x + (box.w - node_w) / 2,
                                                   box.y + self.head(seg) + j * (NODE_H + NODE_GAP), node_w, NODE_H)

    def _wide(self) -> None:
        seg_top = TOP + (HOP_H + HOP_TO_SEG if self.hops else 0)
        for i, seg in enumerate(self.order):
            self.seg_box[seg] = Box(MARGIN + i * (SEG_W + SEG_GAP), seg_top, SEG_W, self._segment_height(seg))
        self._members(NODE_W)
        right = MARGIN
        for hop in self.hops:  # above the middle of its segments, never on another hop
            mine = [self.seg_box[s].cx for s in hop["addresses"] if s in self.seg_box] or [MARGIN + HOP_W / 2]
            x = max(sum(mine) / len(mine) - HOP_W / 2, right)
            self.node_box[hop["label"]] = Box(x, TOP, HOP_W, HOP_H)
            right = x + HOP_W + HOP_GAP
        self.width = max([b.x + b.w for b in [*self.seg_box.values(), *self.node_box.values()]]
                         + [MARGIN]) + MARGIN + 40  # room for arrows that loop out to the right

    def _narrow(self) -> None:
        x = N_MARGIN + (N_HOP_W + N_WIRE if self.hops else 0)
        y = TOP
        for seg in self.order:
            self.seg_box[seg] = Box(x, y, N_SEG_W, self._segment_height(seg))
            y += self.seg_box[seg].h + N_SEG_GAP
        self._members(N_NODE_W)
        below = TOP
        for hop in self.hops:  # beside the middle of its segments' heads, never on another hop
            h = 22 + HOP_LINE * len(hop["addresses"])
            mine = [self.seg_box[s].y + 22 for s in hop["addresses"] if s in self.seg_box] or [below + h / 2]
            top = max(sum(mine) / len(mine) - h / 2, below)
            self.node_box[hop["label"]] = Box(N_MARGIN, top, N_HOP_W, h)
            below = top + h + 14
        self.width = x + N_SEG_W + N_LOOPS + N_MARGIN

    def is_hop(self, box: Box) -> bool:
        return id(box) in self.hop_boxes

    def target(self, label: str, address: str | None = None) -> Box | None:
        """Where a probe's source or destination is drawn: its node, the router for
        'router@segment', else the head of the segment whose subnet holds the address."""
        if label in self.node_box:
            return self.node_box[label]
        name = label.split("@")[0]
        hop = next((h for h in self.hops if h["name"] == name or h["label"] == name), None)
        if hop is not None:
            return self.node_box[hop["label"]]
        for text in (address, label):
            try:
                where = ip_address(text)
            except (TypeError, ValueError):
                continue
            for seg, box in self.seg_box.items():
                if where in ip_network(self.segments[seg]["subnet"], strict=False):
                    return Box(box.x, box.y, box.w, 44)
        return None
