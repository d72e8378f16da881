"""A report page in a browser: headless Chromium's DOM and screenshot, what the page shows,
and how it is laid out at a given window size (`layout`: for tests of legibility)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    for name in CHROMIUM:
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no headless Chromium found (Debian: apt-get install chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="labwarden-chromium-") as profile:
        return subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def browser_dom(page: Path) -> str:
    """The page's DOM as headless Chromium built it."""
    proc = _chromium("--dump-dom", Path(page).resolve().as_uri())
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium could not open {page}: {proc.stderr[-1500:]}")
    return proc.stdout


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """A PNG of the page as headless Chromium draws it."""
    proc = _chromium(f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}",
                     Path(page).resolve().as_uri())
    if proc.returncode != 0 or not Path(png).is_file():
        raise RuntimeError(f"chromium took no screenshot of {page}: {proc.stderr[-1500:]}")
    return Path(png)


# Added to a copy of the page only (the report itself runs no script): what Chromium laid out.
# The copy runs in a frame of the asked size (headless Chromium's own window is never
# narrower than 500 px), and writes into the frame's parent, whose DOM is dumped.
_MEASURE = """<script>
(function () {
  const out = {viewport: innerWidth, page_width: document.documentElement.scrollWidth, pictures: [],
               too_wide: []};
  const clipped = (e) => { for (let a = e.parentElement; a; a = a.parentElement) {
    if (["auto", "scroll", "hidden"].includes(getComputedStyle(a).overflowX)) return true; } return false; };
  for (const e of document.body.querySelectorAll("*")) {
    const spills = e.getBoundingClientRect().right > innerWidth + 1 ||
      (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === "visible" && e.clientWidth > 0);
    if (spills && !clipped(e) && out.too_wide.length < 10)
      out.too_wide.push(e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
                        (e.getAttribute("class") ? "." + e.getAttribute("class") : ""));
  }
  for (const svg of document.querySelectorAll("svg.lab, svg.plot")) {
    const box = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
    if (!box.width) continue;  // not shown at this size (the narrow drawing on a wide screen)
    const scale = vb && vb.width ? box.width / vb.width : 1;
    const wrap = svg.parentElement, texts = [];
    for (const t of svg.querySelectorAll("text")) {
      const r = t.getBoundingClientRect();
      texts.push({text: t.textContent, px: parseFloat(getComputedStyle(t).fontSize) * scale,
                  badge: !!t.closest(".badge"), box: [r.left, r.top, r.width, r.height]});
    }
    out.pictures.push({kind: svg.getAttribute("class"), width: box.width, height: box.height,
                       scrolls: wrap.scrollWidth > wrap.clientWidth + 1, texts: texts});
  }
  const pre = document.createElement("pre");
  pre.id = "lw-layout";
  pre.textContent = JSON.stringify(out);
  parent.document.body.appendChild(pre);
})();
</script>"""


def layout(page: Path, width: int, height: int) -> dict:
    """How headless Chromium lays the page out in a window of this size: the page's width
    (wider than the window: the whole page scrolls sideways), the elements that stick out
    of the window without a box of their own that scrolls (`too_wide`), and, for each picture (the lab
    drawing, the plots) shown at that size, its size, whether its box scrolls, and every
    text's on-screen font size and box."""
    measured = Path(page).read_text().replace("</body>", _MEASURE + "</body>")
    frame = (f"<!DOCTYPE html><html><body style=margin:0><iframe style=\"border:0;width:{width}px;"
             f"height:{height}px\" srcdoc=\"{escape(measured)}\"></iframe></body></html>")
    with tempfile.TemporaryDirectory(prefix="labwarden-layout-") as folder:
        copy = Path(folder) / "frame.html"
        copy.write_text(frame)
        proc = _chromium(f"--window-size={max(width, 800)},{height + 40}", "--dump-dom", copy.as_uri())
    start = proc.stdout.find('<pre id="lw-layout">')
    if proc.returncode != 0 or start < 0:
        raise RuntimeError(f"chromium could not lay out {page}: {proc.stderr[-1500:]}")
    text = proc.stdout[start + len('<pre id="lw-layout">'):proc.stdout.index("</pre>", start)]
    return json.loads(unescape(text))


def overlapping(texts: list[dict], slack: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts (from `layout`) whose boxes overlap by more than slack pixels."""
    pairs = []
    for i, a in enumerate(texts):
        ax, ay, aw, ah = a["box"]
        for b in texts[i + 1:]:
            bx, by, bw, bh = b["box"]
            if min(ax + aw, bx + bw) - max(ax, bx) > slack and min(ay + ah, by + bh) - max(ay, by) > slack:
                pairs.append((a["text"], b["text"]))
    return pairs


class _PageReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.summary = {"cells": [], "matrices": [], "verdict": None, "arrows": [], "narrow_arrows": []}
        self._drawing = "arrows"
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            self.summary["cells"].append({"src": a.get("data-src"), "dst": a.get("data-dst"),
                                          "state": next(c for c in classes if c != "cell"),
                                          "mismatches": int(a.get("data-mismatches", 0))})
        elif tag == "svg" and "lab" in classes:
            self._drawing = "narrow_arrows" if "narrow" in classes else "arrows"
        elif tag == "path" and "mismatch" in classes:
            self.summary[self._drawing].append({"src": a.get("data-src"), "dst": a.get("data-dst"),
                                           "mismatches": int(a.get("data-count", 0)),
                                           "state": next((c for c in classes if c != "mismatch"), None)})
        elif "mismatch-count" in classes:
            self.summary["matrices"].append({"mismatches": int(a["data-count"]), "text": ""})
            self._in = "count"
        elif a.get("id") == "verdict":
            self.summary["verdict"] = {"mismatches": int(a["data-mismatches"]),
                                       "probes": int(a["data-probes"]), "text": ""}
            self._in = "verdict"

    def handle_data(self, data):
        if self._in == "count":
            self.summary["matrices"][-1]["text"] += data
        elif self._in == "verdict":
            self.summary["verdict"]["text"] += data

    def handle_endtag(self, tag):
        self._in = None


def page_summary(html: str) -> dict:
    """What a report page shows: its grid cells (src, dst, state, mismatches), each
    matrix's mismatch count as printed, the overall verdict line, and the red arrows
    (src, dst, state, mismatches) of the wide drawing and of the narrow one."""
    reader = _PageReader()
    reader.feed(html)
    return reader.summary
