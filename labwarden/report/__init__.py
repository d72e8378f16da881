"""Run reports: what a run probed, as a JSON document and as one self-contained HTML page.

- `model`: the `Report` (plain data: a header, probe records, matrices, free-form
  sections, the lab; no pytest, no Docker), its JSON document, `save` and `load`;
- `records`: one probe as the report holds it, its status against the policy, and the
  lab as the drawing needs it (`lab_record`);
- `header`: what was tested, with what, when;
- `formats`: the registry of output formats (``json``, ``html``: `@output_format`);
- `html`: the page: the lab's drawing, every matrix as a colour grid, the mismatches, the
  sections, every probe;
- `drawing`: the lab as inline SVG (segments, nodes, hops, tunnels; mismatches as red arrows);
- `plots`: latency samples as inline SVG (histogram, samples, p50/p95, budget);
- `sections`: the registry of section renderers (`@section_renderer("latency")`);
- `browser`: the page in headless Chromium (DOM, screenshot, layout at a window size) and
  what it shows;
- `__main__`: ``python3 -m labwarden.report run.json -o run.html`` draws the page again
  from the JSON.
"""
