"""From metrics lines to charts: every number in the lines becomes one series, grouped into charts by its path.

The grouping needs no list of metric names, so a key that a later change adds to the lines
gets a chart of its own:
- a few top-level counts that share a scale share a chart (participation, bytes);
- a dict of quantiles (p10, p50, median, min, max ...) or a list of numbers is one chart with
  a line per quantile or item (an update-norm distribution, say);
- a dict of slices ("by_site", or any dict of two or more dicts with the same keys) gives a
  chart per metric with a line per slice (per-site loss);
- every other number is a chart of its own.
Charts fall into sections by their first key (unknown keys go to "Other metrics"); within a
section the charts with a title of their own (TITLES) come first, the rest as first seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedlm.report.records import Path, alert_text, dig, flatten, is_plottable, round_of, walk_alerts
from fedlm.report.svg import Reference, Series

X_KEY = "round"
GROUPS = {  # top-level numbers on one scale: a chart, a line each
    "participation": ("cohort", "accepted", "failed", "dropped", "late", "stale", "rejected", "timed_out"),
    "bytes": ("bytes_up", "bytes_down"),
    "bytes_per_client": ("bytes_up_per_client", "bytes_down_per_client"),
}
SLICE_MAPS = ("by_site", "by_slice", "by_client", "per_site", "per_slice", "slices")
QUANTILE = re.compile(r"^(p\d+(_\d+)?|q\d+|quantile_\d+|min|max|median|mean)$")
NAMED_QUANTILES = {"min": 0.0, "median": 50.0, "mean": 50.0, "max": 100.0}
SECTIONS = (  # (title, first keys of its charts); a chart key starting with "bytes" is traffic
    ("Evaluation", ("eval", "sites")),
    ("Training", ("train_loss", "train_tokens", "redacted", "max_client_share", "seconds")),
    ("Privacy", ("epsilon", "delta", "noise_multiplier", "clip_norm")),
    ("Participation", ("participation",)),
    ("Traffic", ("bytes", "bytes_per_client", "up_vs_full_model")),
    ("Update monitor", ("monitor",)),
)
OTHER_SECTION = "Other metrics"
TITLES = {
    "eval.loss": "Evaluation loss", "eval.perplexity": "Evaluation perplexity", "eval.accuracy": "Evaluation token accuracy",
    "sites.by_site.*.loss": "Eval loss per site", "sites.by_site.*.perplexity": "Eval perplexity per site",
    "sites.mean_loss": "Eval loss, mean over sites", "sites.worst_loss": "Eval loss, worst site",
    "train_loss": "Train loss (cohort)", "participation": "Participation (clients per round)",
    "bytes": "Bytes per round", "bytes_per_client": "Bytes per client", "epsilon": "ε spent",
    "monitor.norm": "Update norms across the cohort", "monitor.cosine": "Update cosine to the others",
    "monitor.alerts": "Alerts raised",
}
REFERENCES = {"epsilon": (("privacy", "target_epsilon"), "target ε (privacy.target_epsilon)")}  # chart key: config path, label


@dataclass(frozen=True)
class Chart:
    key: str  # the metric's path, dotted; "*" stands for the slice, a group's name for a group
    title: str
    section: str
    series: tuple[Series, ...]
    references: tuple[Reference, ...] = ()


def is_slice_map(value: Any, name: str) -> bool:
    """A dict of named slices: called so (by_site ...), or two or more dicts that all hold the same keys."""
    if not isinstance(value, dict) or not value or not all(isinstance(v, dict) for v in value.values()):
        return False
    keys = {tuple(sorted(v)) for v in value.values()}
    return name in SLICE_MAPS or (len(value) >= 2 and len(keys) == 1)


def slice_maps(value: Any, prefix: Path = ()) -> set[Path]:
    """The paths of every slice map under `value`."""
    found: set[Path] = set()
    if isinstance(value, dict):
        if prefix and is_slice_map(value, prefix[-1]):
            found.add(prefix)
        for key, item in value.items():
            found |= slice_maps(item, (*prefix, str(key)))
    return found


def chart_place(path: Path, slice_paths: set[Path]) -> tuple[Path, str]:
    """(chart key, series label) of the number at `path`."""
    for group, names in GROUPS.items():
        if len(path) == 1 and path[0] in names:
            return (group,), path[0]
    if len(path) >= 2 and (QUANTILE.match(path[-1]) or path[-1].isdigit()):
        return path[:-1], path[-1]
    for i in range(1, len(path) - 1):
        if path[:i] in slice_paths:
            return (*path[:i], "*", *path[i + 1:]), path[i]
    return path, ".".join(path)


def quantile_rank(name: str) -> float:
    """Where a quantile's name lies in [0, 100]: min 0, q25 25, p99_9 99.9, median and mean 50, max 100."""
    if name in NAMED_QUANTILES:
        return NAMED_QUANTILES[name]
    number = re.search(r"(\d+)(?:_(\d+))?$", name)
    return float(f"{number[1]}.{number[2] or 0}") if number else 50.0


def section_of(key: Path) -> str:
    for title, firsts in SECTIONS:
        if key[0] in firsts:
            return title
    return "Traffic" if key[0].startswith("bytes") else OTHER_SECTION


def references_for(key: str, config: Mapping[str, Any]) -> tuple[Reference, ...]:
    """A target from the run's config for this chart (ε against privacy.target_epsilon), when one is set."""
    if key not in REFERENCES:
        return ()
    config_path, label = REFERENCES[key]
    value = dig(config, config_path)
    return (Reference(label, value),) if is_plottable(value) and value > 0 else ()


def run_charts(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[Chart]:
    """Every number of every line as a chart's series, x = the line's round; charts in section order."""
    flats = [flatten(dict(r)) for r in records]
    xs = [round_of(dict(r), i) for i, r in enumerate(records)]
    slice_paths = set().union(*(slice_maps(dict(r)) for r in records))
    members: dict[Path, dict[str, Path]] = {}  # chart key -> series label -> path, in first-seen order
    for flat in flats:
        for path in flat:
            if path != (X_KEY,):
                key, label = chart_place(path, slice_paths)
                members.setdefault(key, {}).setdefault(label, path)
    charts = []
    for key, labels in members.items():
        if len(key) == 1 and key[0] in GROUPS:
            labels = {name: labels[name] for name in GROUPS[key[0]] if name in labels}
        elif all(QUANTILE.match(label) for label in labels):
            labels = dict(sorted(labels.items(), key=lambda item: quantile_rank(item[0])))
        series = tuple(Series(label, tuple((x, flat.get(path)) for x, flat in zip(xs, flats, strict=True)), path)
                       for label, path in labels.items())
        name = ".".join(key)
        charts.append(Chart(name, TITLES.get(name, name), section_of(key), series, references_for(name, config)))
    order, known = [title for title, _ in SECTIONS] + [OTHER_SECTION], list(TITLES)
    return sorted(charts, key=lambda c: (order.index(c.section), known.index(c.key) if c.key in known else len(known)))


def alert_marks(records: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(round, its alerts in one text) for every line that holds alerts: a marker on each chart."""
    marks = []
    for i, record in enumerate(records):
        texts = [alert_text(alert) for _, alert in walk_alerts(dict(record))]
        if texts:
            marks.append((round_of(dict(record), i), f"round {round_of(dict(record), i)}: " + "; ".join(texts)))
    return marks
