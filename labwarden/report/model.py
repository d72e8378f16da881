"""The `Report`: everything a run observed, plain data, knowing nothing of pytest or Docker.

The plugin keeps one per session (the `labwarden_report` fixture) and writes
it at the end of the run. Suites add what they observe::

    labwarden_report.add_cells(cells, policy, group="nat")           # judged probes (matrix.Cell)
    labwarden_report.add_section("table", "traceroute laptop -> edge",
                                 {"columns": ["hop", "address", "rtt ms"], "rows": [...]})

`to_dict()` is the JSON document; `save` writes it in every output format
(`labwarden.report.formats`); `load` reads the JSON back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from labwarden.report.formats import write_all
from labwarden.report.records import destination_label, lab_record, probe_record

FORMAT = 1


@dataclass
class Report:
    """Everything a run observed; `to_dict()` is the JSON document."""
    header: dict = field(default_factory=dict)
    probes: list[dict] = field(default_factory=list)
    matrices: list[dict] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)
    lab: dict | None = None  # the lab as drawn (records.lab_record): segments, nodes, tunnels

    def describe_lab(self, policy) -> None:
        """Record the lab the run tested, for the report's drawing (the first one described stays)."""
        if self.lab is None:
            self.lab = lab_record(policy)

    def add_probe(self, flow, expected, observed, policy, group: str = "probes") -> dict:
        record = probe_record(flow, expected, observed, policy, group)
        self.probes.append(record)
        return record

    def add_cells(self, cells, policy, group: str = "probes") -> None:
        """Judged probes (`labwarden.checks.matrix.Cell`s), e.g. a suite's own observations."""
        for cell in cells:
            self.add_probe(cell.flow, cell.expected, cell.observed, policy, group)

    def add_matrix(self, run, title: str = "segmentation matrix") -> dict:
        """A `MatrixRun`: its cells become probes of group `title`, drawn as a grid."""
        policy = run.policy
        self.describe_lab(policy)
        for cell in run.cells.values():
            self.add_probe(cell.flow, cell.expected, cell.observed, policy, title)
        flows = list(run.cells)
        rows = sorted({policy.label(f.src) for f in flows})
        nodes = sorted({destination_label(f, policy) for f in flows if f.dst_node not in (None, policy.router)})
        router = sorted({destination_label(f, policy) for f in flows if f.dst_node == policy.router})
        others = sorted({destination_label(f, policy) for f in flows if f.dst_node is None})
        matrix = {"title": title, "rows": rows, "columns": nodes + router + others,
                  "failed_controls": {policy.label(src): [c.message(policy) for c in cs]
                                      for src, cs in run.failed_controls.items()},
                  # mismatches confirmed alone (labwarden.checks.matrix), and those then answered: rate-limited
                  "reprobed": [f.label(policy) for f in run.reprobes.sent],
                  "rate_limited": [f.label(policy) for f in run.reprobes.answered]}
        self.matrices.append(matrix)
        return matrix

    def add_section(self, kind: str, title: str, data) -> dict:
        """Anything else worth showing; `kind` picks the renderer (see `labwarden.report.sections`)."""
        section = {"kind": kind, "title": title, "data": data}
        self.sections.append(section)
        return section

    def mismatches(self, group: str | None = None) -> list[dict]:
        return [p for p in self.probes if not p["ok"] and (group is None or p["group"] == group)]

    def to_dict(self) -> dict:
        doc = {"labwarden_report": FORMAT, "header": self.header, "matrices": self.matrices,
               "sections": self.sections, "probes": self.probes}
        if self.lab is not None:
            doc["lab"] = self.lab
        return doc

    def save(self, directory: Path, stem: str = "labwarden") -> tuple[Path, ...]:
        """Write STEM.json, STEM.html (every format of `labwarden.report.formats`) into
        directory; returns the paths, in that order."""
        return write_all(self.to_dict(), directory, stem)

    @classmethod
    def load(cls, path: Path) -> Report:
        doc = json.loads(Path(path).read_text())
        if doc.get("labwarden_report") != FORMAT:
            raise ValueError(f"{path}: not a labwarden report (format {FORMAT})")
        return cls(doc["header"], doc["probes"], doc["matrices"], doc["sections"], doc.get("lab"))
