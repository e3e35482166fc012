"""The run report: one self-contained HTML file of a run's (or an experiment's) metrics, per round.

`fedlm report RUN_DIR` reads metrics.jsonl, config.toml and summary.json (or an experiment's
results.json) and writes one HTML file that opens without a network: inline CSS, inline SVG,
no JavaScript at all.

Metrics are read generically: every number in a metrics line, at any depth of nested
dicts, becomes a plotted series (series.py groups them into charts), so a metric that a
later change adds to the lines shows up without a change here. An "alerts" list anywhere in
a line becomes a row of the alerts table and a marker on every chart at that round.

Why our own small SVG renderer (svg.py) rather than matplotlib or a JavaScript chart
library: every point is an SVG element that carries its round and its exact value as a
<title> tooltip and as data- attributes (the value as Python's repr, which reads back as
the same double), so a reader hovering a point and the browser test reading the DOM both
see the number that metrics.jsonl holds; matplotlib's SVG backend draws anonymous paths,
and a JavaScript library would have to be inlined into every report (and run before
anything shows). The renderer is a few pure functions from numbers to markup.

All rendering is pure (records and a config dict in, HTML strings out), so a live
dashboard can call the same functions with the lines it has so far; file I/O lives in
fedlm.cli.report_cmd.
"""
