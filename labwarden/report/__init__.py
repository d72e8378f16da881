"""Run reports: what a run probed, as a JSON document and as one self-contained HTML page.

- `model`: the `Report` (plain data: a header, probe records, matrices, free-form
  sections; no pytest, no Docker), its JSON document, `save` and `load`;
- `records`: one probe as the report holds it, and its status against the policy;
- `header`: what was tested, with what, when;
- `formats`: the registry of output formats (``json``, ``html``: `@output_format`);
- `html`: the page: every matrix as a colour grid, the mismatches, the sections, every probe;
- `sections`: the registry of section renderers (`@section_renderer("latency")`);
- `browser`: the page in headless Chromium (DOM, screenshot) and what it shows;
- `__main__`: ``python3 -m labwarden.report run.json -o run.html`` draws the page again
  from the JSON.
"""
