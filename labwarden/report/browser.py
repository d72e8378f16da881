"""A report page in a browser: headless Chromium's DOM and screenshot, and what the page shows."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
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


class _PageReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.summary = {"cells": [], "matrices": [], "verdict": None}
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            self.summary["cells"].append({"src": a.get("data-src"), "dst": a.get("data-dst"),
                                          "state": next(c for c in classes if c != "cell"),
                                          "mismatches": int(a.get("data-mismatches", 0))})
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
    matrix's mismatch count as printed, and the overall verdict line."""
    reader = _PageReader()
    reader.feed(html)
    return reader.summary
