"""The lab as a drawing: inline SVG from the report's ``lab`` record and its probes.

Segments are boxes, each holding the nodes attached to it alone; nodes on several
segments (the router first, then other hops such as a satellite) are joined to each of
their segments by a line and their address there. Where everything stands, wide (for
screens) or narrow (for a phone; the page shows one or the other), is for
`labwarden.report.layout` to say. Impaired links are tagged in orange, tunnels are
dashed purple arcs from the client to the edge, and every (source, destination) pair with a mismatching probe is
one red arrow (solid: got through although forbidden; dashed: blocked or answered
otherwise than the policy says) with its count. Plain data in, SVG text out: no
scripts, no fonts or files fetched, every name escaped.
"""

from __future__ import annotations

from html import escape

from labwarden.report.layout import N_MARGIN, SEG_GAP, SEG_PAD, SEG_W, Box, Layout, impairment_lines
from labwarden.report.records import LEAK

LANE_GAP = 9  # between the lanes of arrows that run below the segments
CHAR_W = 7.6  # about, of a 13px name: a longer name is cut to its box (the whole name is its tooltip)

CSS = """
.drawing-wrap{overflow-x:auto;max-width:100%} .drawing-wrap.narrow{display:none}
@media (max-width:700px){.drawing-wrap.wide{display:none} .drawing-wrap.narrow{display:block}}
svg.lab{font:13px system-ui,sans-serif;background:#fff;display:block} svg.lab.narrow{width:100%;height:auto}
svg.lab .seg rect{fill:#f3f6f9;stroke:#aab4bf;stroke-width:1.2}
svg.lab .seg text.name{font-weight:700;font-size:14px;fill:#1d2329} svg.lab .seg text.sub{font-size:12px;fill:#4d5761}
svg.lab .node rect{fill:#fff;stroke:#5c6b7a;stroke-width:1.2}
svg.lab .node.hop rect{fill:#e7eef6;stroke:#3b5b7a}
svg.lab .node.router rect{fill:#1f3a57;stroke:#1f3a57} svg.lab .node.router text{fill:#fff}
svg.lab .node text.name{font-weight:600;font-size:13px} svg.lab .node text.addr{font:12px ui-monospace,monospace;fill:#4d5761}
svg.lab .node.router text.addr{fill:#d6e2ee}
svg.lab line.wire{stroke:#5c6b7a;stroke-width:2} svg.lab rect.wire{fill:#fff}
svg.lab text.wire{font:12px ui-monospace,monospace;fill:#1d2329}
svg.lab text.impair{font-size:12px;fill:#b35c00;font-weight:600}
svg.lab path.tunnel{fill:none;stroke:#7048e8;stroke-width:2.5;stroke-dasharray:7 4}
svg.lab text.tunnel{font-size:12px;fill:#5f3dc4;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:4px}
svg.lab path.mismatch{fill:none;stroke:#d01f1f;stroke-width:2.5}
svg.lab path.mismatch.wrong{stroke-dasharray:6 4}
svg.lab .badge circle{fill:#d01f1f;stroke:#fff;stroke-width:1.5} svg.lab .badge text{fill:#fff;font-size:12px;font-weight:700}
.drawing-legend{display:flex;gap:16px;flex-wrap:wrap;margin:6px 0 0;font-size:13px}
.drawing-legend span{display:inline-flex;align-items:center;gap:6px}
"""
LEGEND = ("<div class=drawing-legend>"
          "<span><svg width=26 height=12><rect x=1 y=1 width=24 height=10 rx=3 fill=#1f3a57 /></svg>the router</span>"
          "<span><svg width=26 height=12><rect x=1 y=1 width=24 height=10 rx=3 fill=#e7eef6 stroke=#3b5b7a />"
          "</svg>a node on several segments</span>"
          "<span><svg width=30 height=12><path d='M1 6h28' stroke=#7048e8 stroke-width=2.5 stroke-dasharray='7 4'/>"
          "</svg>tunnel</span>"
          "<span><svg width=30 height=12><path d='M1 6h28' stroke=#d01f1f stroke-width=2.5 /></svg>"
          "mismatch: got through although forbidden</span>"
          "<span><svg width=30 height=12><path d='M1 6h28' stroke=#d01f1f stroke-width=2.5 stroke-dasharray='6 4'/>"
          "</svg>mismatch: blocked or answered otherwise than the policy says</span></div>")


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def _node(box: Box, node: dict, kind: str, lines: list[str]) -> str:
    chars = int((box.w - 14) / CHAR_W)
    texts = "".join(f'<text class="addr" x="{box.x + 9:.1f}" y="{box.y + 33 + 15 * i:.1f}">{escape(_cut(line, chars + 3))}'
                    "</text>" for i, line in enumerate(lines))
    return (f'<g class="node {kind}" data-node="{escape(node["label"])}"><title>{escape(node["label"])}</title>'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w}" height="{box.h}" rx="6"/>'
            f'<text class="name" x="{box.x + 9:.1f}" y="{box.y + 17:.1f}">{escape(_cut(node["name"], chars))}</text>'
            f'{texts}</g>')


def _sub(info: dict, seg: str, box: Box) -> str:
    """A segment's second line: its subnet, and its zone when that is another name and fits."""
    subnet, zone = info.get("subnet", ""), info.get("zone")
    with_zone = f"{subnet} · zone {zone}"
    return with_zone if zone and zone != seg and len(with_zone) * 6.6 <= box.w - 16 else subnet


def _segments(layout: Layout) -> tuple[list[str], list[str]]:
    parts, nodes = [], []
    for seg in layout.order:
        box, info = layout.seg_box[seg], layout.segments[seg]
        title = seg + (f" (zone {info['zone']})" if info.get("zone") else "")
        parts.append(f'<g class="seg" data-segment="{escape(seg)}"><title>{escape(title)}</title>'
                     f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w}" height="{box.h}" rx="9"/>'
                     f'<text class="name" x="{box.x + 12:.1f}" y="{box.y + 21:.1f}">{escape(_cut(seg, 19))}</text>'
                     f'<text class="sub" x="{box.x + 12:.1f}" y="{box.y + 39:.1f}">{escape(_sub(info, seg, box))}</text>')
        if seg in layout.impaired:
            for i, line in enumerate(impairment_lines(layout.impaired[seg])):
                parts.append(f'<text class="impair" x="{box.x + 12:.1f}" y="{box.y + 58 + 16 * i:.1f}">'
                             f'{escape(_cut(line, int((box.w - 14) / 6.8)))}</text>')
        parts.append("</g>")
        for node in layout.members[seg]:
            link = layout.impaired.get((node["name"], seg))
            address = node["addresses"][seg] + (" ~" + f"{link.get('delay_ms', 0):g} ms" if link else "")
            nodes.append(_node(layout.node_box[node["label"]], node, "host", [address]))
    return parts, nodes


def _hops(layout: Layout) -> list[str]:
    wires, labels, boxes = [], [], []
    attached: dict[str, list[str]] = {}
    for hop in layout.hops:
        for seg in hop["addresses"]:
            attached.setdefault(seg, []).append(hop["name"])
    for hop in layout.hops:
        top = layout.node_box[hop["label"]]
        mine = [s for s in hop["addresses"] if s in layout.seg_box]
        kind = "router" if hop["name"] == layout.router else "hop"
        if layout.narrow:  # the addresses in the box, a wire from each to its segment's side
            for i, seg in enumerate(mine):
                box = layout.seg_box[seg]
                y2 = box.y + 16 + 10 * attached[seg].index(hop["name"])
                wires.append(f'<line class="wire" x1="{top.x + top.w:.1f}" y1="{top.y + 29 + 15 * i:.1f}" '
                             f'x2="{box.x:.1f}" y2="{y2:.1f}"/>')
            boxes.append(_node(top, hop, kind, [hop["addresses"][s] for s in mine]))
            continue
        for i, seg in enumerate(mine):
            box = layout.seg_box[seg]
            k, at = len(attached[seg]), attached[seg].index(hop["name"])
            x2 = box.x + box.w * (2 * at + 1) / (2 * k)
            x1 = top.x + top.w * (i + 1) / (len(mine) + 1)
            wires.append(f'<line class="wire" x1="{x1:.1f}" y1="{top.y + top.h:.1f}" x2="{x2:.1f}" y2="{box.y:.1f}"/>')
            t = 0.45 if at % 2 else 0.64  # on the line, which it hides under its halo
            lx, ly = x1 + (x2 - x1) * t, top.y + top.h + (box.y - top.y - top.h) * t
            text = hop["addresses"][seg]
            w = 7.3 * len(text) + 6
            labels.append(f'<rect class="wire" x="{lx - w / 2:.1f}" y="{ly - 8:.1f}" width="{w:.1f}" height="16"/>'
                          f'<text class="wire" x="{lx:.1f}" y="{ly + 4:.1f}" text-anchor="middle">{escape(text)}</text>')
        role = f"{'router' if kind == 'router' else 'hop'}, {len(mine)} segments"
        link = next((layout.impaired[(hop["name"], s)] for s in mine if (hop["name"], s) in layout.impaired), None)
        boxes.append(_node(top, hop, kind, [role + (f" ~{link.get('delay_ms', 0):g} ms" if link else "")]))
    return wires + labels + boxes


Point = tuple[float, float]


def _on_bezier(p: tuple[Point, Point, Point, Point], t: float) -> Point:
    u = 1 - t
    return (u ** 3 * p[0][0] + 3 * u * u * t * p[1][0] + 3 * u * t * t * p[2][0] + t ** 3 * p[3][0],
            u ** 3 * p[0][1] + 3 * u * u * t * p[1][1] + 3 * u * t * t * p[2][1] + t ** 3 * p[3][1])


def _curve(a: Box, b: Box, out: float, into: float, hops=(False, False),
           reach_max: float = 200) -> tuple[Point, Point, Point, Point]:
    """A cubic from box a to box b, leaving and entering by the sides facing each other (a
    loop out to the right when both sit in one column); out and into (0..1) say where along
    those sides, so that arrows sharing a node stay apart."""
    if abs(a.cx - b.cx) < 1:  # one column: out of the right side and back in
        p0, p3 = (a.x + a.w, a.y + a.h * out), (b.x + b.w, b.y + b.h * into)
        reach = min(30 + 12 * abs(a.cy - b.cy) / 48, reach_max)
        return p0, (p0[0] + reach, p0[1]), (p3[0] + reach, p3[1]), p3
    a_hop, b_hop = hops
    if b_hop and not a_hop:  # up to a hop: into its bottom
        right = b.cx >= a.cx
        p0, p3 = (a.x + a.w if right else a.x, a.y + a.h * out), (b.x + b.w * into, b.y + b.h)
        return p0, (p0[0] + (40 if right else -40), p0[1]), (p3[0], p3[1] + 50), p3
    if a_hop and not b_hop and abs(a.cx - b.cx) < a.w:  # down from a hop to a node below it
        p0, p3 = (a.x + a.w * out, a.y + a.h), (b.x + b.w, b.y + b.h * into)
        return p0, (p0[0], p0[1] + 50), (p3[0] + 50, p3[1]), p3
    right = b.cx > a.cx
    p0 = (a.x + a.w if right else a.x, a.y + a.h * out)
    p3 = (b.x if right else b.x + b.w, b.y + b.h * into)
    dx = (p3[0] - p0[0]) / 2
    return p0, (p0[0] + dx, p0[1]), (p3[0] - dx, p3[1]), p3


def _lane(a: Box, b: Box, y: float, out: float, into: float) -> tuple[str, float, float]:
    """A path between nodes of segments that are not neighbours: out of a's side into the
    gap beside its segment, down below every segment, along, and up the gap beside b's
    into b's side, so that it crosses no node; and where the lane starts and ends."""
    right = b.cx > a.cx
    ay, by = a.y + a.h * out, b.y + b.h * into
    x1 = a.x + a.w if right else a.x
    x2 = b.x if right else b.x + b.w
    g1 = x1 + (SEG_PAD + SEG_GAP / 2) * (1 if right else -1)
    g2 = x2 - (SEG_PAD + SEG_GAP / 2) * (1 if right else -1)
    r = 10 if right else -10
    path = (f"M{x1:.1f} {ay:.1f} H{g1 - r:.1f} Q{g1:.1f} {ay:.1f} {g1:.1f} {ay + 10:.1f} "
            f"V{y - 10:.1f} Q{g1:.1f} {y:.1f} {g1 + r:.1f} {y:.1f} H{g2 - r:.1f} "
            f"Q{g2:.1f} {y:.1f} {g2:.1f} {y - 10:.1f} V{by + 10:.1f} Q{g2:.1f} {by:.1f} {g2 + r:.1f} {by:.1f} "
            f"H{x2:.1f}")
    return path, g1, g2


def mismatch_pairs(probes: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The mismatching probes by (source, destination): one arrow each."""
    pairs: dict[tuple[str, str], list[dict]] = {}
    for p in probes:
        if not p.get("ok", True):
            pairs.setdefault((p["src"], p["dst"]), []).append(p)
    return pairs


BADGE_R = 9
TRIES = (0.5, 0.38, 0.62, 0.28, 0.72, 0.2, 0.8, 0.44, 0.56, 0.33, 0.67)  # where along an arrow its badge may sit


def _free(at: Point, taken: list[Point]) -> bool:
    return all((at[0] - x) ** 2 + (at[1] - y) ** 2 >= (2 * BADGE_R + 2) ** 2 for x, y in taken)


def _spread(i: int, k: int) -> float:
    return (i + 1) / (k + 1)


def _arrows(layout: Layout, probes: list[dict]) -> tuple[list[str], list[str], int]:
    """The red arrows and their count badges (each where it covers no other badge, if it
    can), notes on what could not be placed, and how many lanes below the segments the
    arrows took."""
    arrows, badges, lost, taken = [], [], [], []
    placed = []
    for (src, dst), bad in sorted(mismatch_pairs(probes).items()):
        a, b = layout.target(src), layout.target(dst, bad[0].get("dst_address"))
        if a is None or b is None:
            lost.append(f"{src} -> {dst}")
        else:
            placed.append((src, dst, bad, a, b))
    outs = [id(a) for _, _, _, a, _ in placed]
    ins = [id(b) for _, _, _, _, b in placed]
    lanes = 0
    for n, (src, dst, bad, a, b) in enumerate(placed):
        out = _spread(outs[:n].count(id(a)), outs.count(id(a)))
        into = _spread(ins[:n].count(id(b)), ins.count(id(b)))
        hops = (layout.is_hop(a), layout.is_hop(b))
        if not layout.narrow and not any(hops) and abs(a.cx - b.cx) > SEG_W + SEG_GAP + 1:
            y = layout.bottom + LANE_GAP * (lanes + 1)
            path, g1, g2 = _lane(a, b, y, out, into)
            spots = [(g1 + (g2 - g1) * t, y) for t in TRIES]
            lanes += 1
        else:
            curve = _curve(a, b, out, into, (False, False) if layout.narrow else hops,
                           reach_max=24 if layout.narrow else 200)
            (x1, y1), c1, c2, (x2, y2) = curve
            path = f"M{x1:.1f} {y1:.1f} C{c1[0]:.1f} {c1[1]:.1f} {c2[0]:.1f} {c2[1]:.1f} {x2:.1f} {y2:.1f}"
            spots = [_on_bezier(curve, t) for t in TRIES]
        mx, my = next((at for at in spots if _free(at, taken)), spots[0])
        taken.append((mx, my))
        kind = LEAK if any(p.get("status") == LEAK for p in bad) else "wrong"
        services = ", ".join(sorted({p["service"] for p in bad})[:8])
        tip = f"{src} -> {dst}: {len(bad)} mismatch{'es' if len(bad) != 1 else ''} ({services})"
        arrows.append(f'<path class="mismatch {kind}" d="{path}" marker-end="url(#lw-arrow)" '
                      f'data-src="{escape(src)}" data-dst="{escape(dst)}" data-count="{len(bad)}">'
                      f'<title>{escape(tip)}</title></path>')
        badges.append(f'<g class="badge"><title>{escape(tip)}</title>'
                      f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="{BADGE_R}"/>'
                      f'<text x="{mx:.1f}" y="{my + 4:.1f}" text-anchor="middle">{len(bad)}</text></g>')
    notes = [f"<p class=bad>mismatches between places not in the drawing: {escape('; '.join(lost))}</p>"] if lost else []
    return arrows + badges, notes, lanes


def _tunnels(layout: Layout, below: float) -> tuple[list[str], float]:
    """Each tunnel as a dashed arc from its client to its edge, and the height they take:
    wide, along the bottom with its label on it; narrow, a loop on the right, labelled below."""
    parts, y = [], below
    for t in layout.lab.get("tunnels", []):
        a, b = layout.target(t["client"]), layout.target(t["edge"])
        if a is None or b is None:
            continue
        label = f"tunnel {t['name']}: {t['client']} {t['local']} → {t['edge']} {t['public']}"
        if layout.narrow:
            x1, x2, right = a.x + a.w, b.x + b.w, max(a.x + a.w, b.x + b.w) + 22
            path = f"M{x1:.1f} {a.cy + 8:.1f} C{right:.1f} {a.cy + 8:.1f} {right:.1f} {b.cy + 8:.1f} {x2:.1f} {b.cy + 8:.1f}"
            lines = [f"tunnel {t['name']}:", f"{t['client']} {t['local']} → {t['edge']} {t['public']}"]
            text = "".join(f'<text class="tunnel" x="{N_MARGIN}" y="{y + 18 + 16 * i:.1f}">'
                           f'{escape(line)}</text>' for i, line in enumerate(lines))
            y += 40
        else:
            y += 34
            path = (f"M{a.cx:.1f} {a.y + a.h:.1f} C{a.cx:.1f} {y - 14:.1f} {a.cx:.1f} {y - 14:.1f} {a.cx + 30:.1f} "
                    f"{y - 14:.1f} L{b.cx - 30:.1f} {y - 14:.1f} C{b.cx:.1f} {y - 14:.1f} {b.cx:.1f} {y - 14:.1f} "
                    f"{b.cx:.1f} {b.y + b.h:.1f}")
            text = (f'<text class="tunnel" x="{(a.cx + b.cx) / 2:.1f}" y="{y - 20:.1f}" text-anchor="middle">'
                    f'{escape(label)}</text>')
        parts.append(f'<g class="tunnel-g" data-tunnel="{escape(t["name"])}"><title>{escape(label)}</title>'
                     f'<path class="tunnel" d="{path}"/>{text}</g>')
    return parts, y - below


def lab_svg(lab: dict, probes: list[dict] = (), narrow: bool = False) -> str:
    """One drawing of the lab, wide or narrow (an SVG element)."""
    layout = Layout(lab, narrow)
    segments, nodes = _segments(layout)
    arrows, notes, lanes = _arrows(layout, list(probes))
    below = layout.bottom + LANE_GAP * lanes + (10 if lanes else 0)
    tunnels, room = _tunnels(layout, below)
    height = below + 12 + room
    kind = "narrow" if narrow else "wide"
    defs = (f'<defs><marker id="lw-arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" '
            'markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#d01f1f"/>'
            '</marker></defs>')
    arrows = [a.replace("url(#lw-arrow)", f"url(#lw-arrow-{kind})") for a in arrows]
    return (f'<svg class="lab {kind}" xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {layout.width:.0f} {height:.0f}" style="max-width:{layout.width:.0f}px" role="img" '
            f'aria-label="{escape("lab " + str(lab.get("name", "")))}">{defs}'
            + "".join(segments + tunnels + nodes + _hops(layout) + arrows) + "</svg>" + "".join(notes))


def lab_drawings(lab: dict, probes: list[dict] = ()) -> str:
    """The lab for the page: the wide drawing, the narrow one (shown instead on a phone), the
    legend and the port forwards (an HTML fragment)."""
    forwards = lab.get("forwards", [])
    caption = ("<p class=forwards>Port forwards: " + escape("; ".join(
        f"{lab.get('router')} {f['public']} → {f['to']}:{f['port']}" for f in forwards)) + "</p>") if forwards else ""
    return (f"<div class='drawing-wrap wide'>{lab_svg(lab, probes)}</div>"
            f"<div class='drawing-wrap narrow'>{lab_svg(lab, probes, narrow=True)}</div>{LEGEND}{caption}")
