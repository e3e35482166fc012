"""The peer benchmark's table: seconds per round of fedlm, Flower and pfl, ratios, the floor.

A row is one case (N clients x P parameters) as run.py collects it:
    {"clients": N, "params": P,
     "floor": {"seconds": s, ...},
     "fedlm" | "flower" | "pfl": {"status": "ok", "seconds_per_round_median": s, ...}
                                 or {"status": "missing" | "timeout" | "failed", ...}}
A framework that did not give a figure shows its status in place of the figure, and any
ratio that needs it shows "-".
"""

from __future__ import annotations

FRAMEWORKS = ("fedlm", "flower", "pfl")
PEERS = ("flower", "pfl")
TITLES = {"fedlm": "fedlm", "flower": "Flower 1.42", "pfl": "pfl 0.6"}


def case_label(clients: int, params: int) -> str:
    """'100 x 1e6' for 100 clients of 1,000,000 parameters."""
    mantissa, exponent = f"{params:.0e}".split("e")
    power = f"1e{int(exponent)}" if mantissa == "1" else f"{params:,}"
    return f"{clients} x {power}"


def seconds_of(entry: dict | None) -> float | None:
    """The median seconds per round of a framework's entry, None when it has no figure."""
    if not entry or entry.get("status") != "ok":
        return None
    return float(entry["seconds_per_round_median"])


def format_seconds(seconds: float | None, entry: dict | None = None) -> str:
    if seconds is None:
        return (entry or {}).get("status", "-")
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "-"
    ratio = numerator / denominator
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:.0f}x"


def render_table(rows: list[dict]) -> str:
    """A Markdown table: one line per case, seconds per round (median) and ratios."""
    header = (
        ["N x P", "floor s"]
        + [f"{TITLES[name]} s" for name in FRAMEWORKS]
        + [f"{TITLES[peer]} / fedlm" for peer in PEERS]
        + ["fedlm / floor"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        floor = row["floor"]["seconds"]
        seconds = {name: seconds_of(row.get(name)) for name in FRAMEWORKS}
        cells = [case_label(row["clients"], row["params"]), format_seconds(floor)]
        cells += [format_seconds(seconds[name], row.get(name)) for name in FRAMEWORKS]
        cells += [format_ratio(seconds[peer], seconds["fedlm"]) for peer in PEERS]
        cells.append(format_ratio(seconds["fedlm"], floor))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_first_rounds(rows: list[dict]) -> str:
    """One line per case: each framework's first (warm-up) round, which the median leaves out."""
    lines = []
    for row in rows:
        parts = []
        for name in FRAMEWORKS:
            entry = row.get(name) or {}
            first = entry.get("first_round_seconds") if entry.get("status") == "ok" else None
            parts.append(f"{TITLES[name]} {format_seconds(first, entry)}")
        lines.append(f"{case_label(row['clients'], row['params'])}: " + ", ".join(parts))
    return "\n".join(lines)
