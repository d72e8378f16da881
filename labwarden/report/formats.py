"""A report's output formats: a registry of file suffix -> `writer(doc) -> text`.

`Report.save` writes the JSON document (`Report.to_dict()`) once per registered
format, as STEM.SUFFIX; built in are ``json`` and ``html`` (pytest itself writes
the run's ``junit.xml``). A new format is one function::

    @output_format("md")
    def markdown(doc: dict) -> str: ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from labwarden.report.html import render_html

FORMATS: dict[str, Callable[[dict], str]] = {}


def output_format(suffix: str):
    """Register `func(doc) -> text` as the way a report is written to STEM.SUFFIX."""
    def register(func):
        FORMATS[suffix] = func
        return func
    return register


@output_format("json")
def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=1, default=str) + "\n"


output_format("html")(render_html)


def write_all(doc: dict, directory: Path, stem: str) -> tuple[Path, ...]:
    """STEM.SUFFIX in directory for every registered format, in registration order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, writer in FORMATS.items():
        path = directory / f"{stem}.{suffix}"
        path.write_text(writer(doc))
        paths.append(path)
    return tuple(paths)
