"""What a tracker is given: a round's numbers flattened to named scalars, and the config flattened to named params.

Pure functions over the run directory's own data (metrics.jsonl lines, config.toml's tables),
so every tracker logs the same names and the same values. Only numbers leave a record
(bools as 0/1): strings, lists and None stay behind, so no text goes to a tracker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

# MLflow accepts alphanumerics, _ - . space / and : in a name; anything else (a site id's odd character) becomes _.
_UNSAFE = re.compile(r"[^\w\-. /:]")


def is_number(value: Any) -> bool:
    """A value a tracker plots: int, float (NaN and inf included: a diverged loss is worth seeing) or bool."""
    return isinstance(value, bool | int | float)


def flat_items(data: Mapping[str, Any], sep: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(name, value) for every leaf of nested dicts, names joined by `sep`: {"eval": {"loss": 1}} -> ("eval.loss", 1)."""
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flat_items(value, sep, name)
        else:
            yield name, value


def safe_name(name: str) -> str:
    return _UNSAFE.sub("_", name)


def round_metrics(record: Mapping[str, Any], sep: str = ".") -> dict[str, float]:
    """A metrics.jsonl line as {name: value} of its numbers (nested dicts flattened with `sep`); step is record["round"]."""
    return {safe_name(name): float(value) for name, value in flat_items(record, sep) if is_number(value)}


def param_value(value: Any) -> str:
    """A setting as a tracker param: strings as they are, anything else as JSON (true, 3, ["q_proj", "v_proj"])."""
    return value if isinstance(value, str) else json.dumps(value)


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """config.toml's tables ({section: {key: value}}) as {"section.key": value as text}."""
    return {safe_name(name): param_value(value) for name, value in flat_items(config, ".")}
