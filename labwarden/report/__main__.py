"""``python3 -m labwarden.report run.json [-o run.html] [--screenshot run.png] [--lab FOLDER]``:
draw a report's HTML page again from its JSON. A report written before reports held their
lab (its ``lab`` record, for the drawing) gets it from the lab folder its header names, or
from ``--lab``, when that folder is there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labwarden.declared.lab import load_lab
from labwarden.errors import LabwardenError
from labwarden.report.browser import screenshot
from labwarden.report.html import render_html
from labwarden.report.model import Report
from labwarden.report.records import lab_record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m labwarden.report",
                                     description="Draw a report's HTML page again from its JSON.")
    parser.add_argument("json", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: beside the JSON, .html")
    parser.add_argument("--screenshot", type=Path, help="also draw the page into this PNG (headless Chromium)")
    parser.add_argument("--lab", type=Path, help="the lab folder to draw (default: the report's own record, "
                                                  "else the folder its header names)")
    args = parser.parse_args(argv)
    try:
        report = Report.load(args.json)
        folder = args.lab or (None if report.lab else report.header.get("topology_path"))
        if folder is not None and Path(folder).is_dir():
            policy = None if args.lab else report.header.get("policy")
            report.lab = lab_record(load_lab(Path(folder), policy).policy)
        doc = report.to_dict()
    except (OSError, ValueError, KeyError, LabwardenError) as err:
        print(f"labwarden: {err}", file=sys.stderr)
        return 2
    out = args.output or args.json.with_suffix(".html")
    out.write_text(render_html(doc))
    print(out)
    if args.screenshot:
        try:
            print(screenshot(out, args.screenshot))
        except (OSError, RuntimeError) as err:
            print(f"labwarden: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
