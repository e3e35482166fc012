"""What every `fedlm experiment` comparison writes: results.json, a Markdown table and one PNG, and how its figure is drawn."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@contextmanager
def figure(path: Path, *, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """A matplotlib axes (Agg backend, no display needed) saved to `path` with its labels, legend and grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path, *, table: Callable[[dict[str, Any]], str],
                  plot: Callable[[dict[str, Any], Path], None], plot_name: str) -> dict[str, Path]:
    """results.json, results.md (`table`) and `plot_name` (`plot`) in `out`; their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / RESULTS_JSON, "table": out / RESULTS_MD, "plot": out / plot_name}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["table"].write_text(table(results))
    plot(results, paths["plot"])
    return paths
