"""Per-site evaluation for cross-silo runs: each site's own held-out split, the mean site and the worst.

A handful of sites (hospitals, banks) each train and are each judged on their own held-out
text; the pooled figure hides a site the shared model serves badly, so the metrics name
the mean over sites (every site counts once, whatever its size) and the worst site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedlm.eval.metrics import EvalResult


def pooled(sites: Mapping[str, EvalResult]) -> EvalResult:
    """Every site's tokens and questions together: the sums add up exactly."""
    return sum(sites.values(), EvalResult())


def site_summary(sites: Mapping[str, EvalResult]) -> dict[str, Any]:
    """Each site's figures, the unweighted mean loss and perplexity over sites, and the worst site (highest loss)."""
    scored = {name: result for name, result in sites.items() if result.tokens}
    if not scored:
        return {"by_site": {}, "mean_loss": None, "mean_perplexity": None, "worst_site": None, "worst_loss": None,
                "worst_perplexity": None}
    worst = max(sorted(scored), key=lambda name: scored[name].loss)
    losses = [scored[name].loss for name in sorted(scored)]
    return {
        "by_site": {name: sites[name].as_dict() for name in sorted(sites)},
        "mean_loss": math.fsum(losses) / len(losses),
        "mean_perplexity": math.fsum(math.exp(loss) for loss in losses) / len(losses),
        "worst_site": worst,
        "worst_loss": scored[worst].loss,
        "worst_perplexity": scored[worst].perplexity,
    }
