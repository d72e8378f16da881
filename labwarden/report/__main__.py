"""``python3 -m labwarden.report run.json [-o run.html] [--screenshot run.png]``: draw a
report's HTML page again from its JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labwarden.report.browser import screenshot
from labwarden.report.html import render_html
from labwarden.report.model import Report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m labwarden.report",
                                     description="Draw a report's HTML page again from its JSON.")
    parser.add_argument("json", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: beside the JSON, .html")
    parser.add_argument("--screenshot", type=Path, help="also draw the page into this PNG (headless Chromium)")
    args = parser.parse_args(argv)
    try:
        doc = Report.load(args.json).to_dict()
    except (OSError, ValueError, KeyError) as err:
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
