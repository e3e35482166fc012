"""What a client's metrics may say under differential privacy: nothing computed from its data.

User-level DP (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models") bounds what the *noised update* reveals about one client; a client's training loss,
token count, update norm or redaction count sent beside it is not noised, so under DP it
would leak around the mechanism (the round's mean train loss of a small cohort is almost a
single client's loss). Under DP a client's metrics are therefore cut to the data-free ones
(`steps`, `bytes_up`), on the client before they leave it and again where the round engine
takes them, so a client that sends more anyway has the rest dropped before anything is kept,
logged or stored.

One exception, central placement with adaptive clipping (Andrew et al. 2021): the server
counts each client's 0/1 `unclipped` bit into the count it noises. Under central DP the
server already sees each clipped update, whose norm tells the bit, so the bit adds nothing
the server does not hold; it is never published (only the noised count moves the clip
norm). With distributed placement the server must not learn it, and that combination is
refused by the config check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DATA_FREE_METRICS = ("steps", "bytes_up")  # set by the run's settings and the wire format, not by the client's data
ADAPTIVE_BIT = "unclipped"


def releasable_metrics(metrics: Mapping[str, float], *, dp: bool, adaptive_central: bool = False) -> dict[str, float]:
    """The metrics a client may report: all of them without DP, the data-free ones (and the adaptive bit where the
    server needs it) under DP."""
    if not dp:
        return dict(metrics)
    keep = DATA_FREE_METRICS + ((ADAPTIVE_BIT,) if adaptive_central else ())
    return {name: value for name, value in metrics.items() if name in keep}


def releasable_for(metrics: Mapping[str, float], plan) -> dict[str, float]:
    """`releasable_metrics` under a run's privacy plan (fedlm.privacy.plan.PrivacyPlan, or None without DP)."""
    if plan is None:
        return dict(metrics)
    return releasable_metrics(metrics, dp=True, adaptive_central=plan.adaptive_clip and plan.placement == "central")


def reported_sum(metrics: Iterable[Mapping[str, float]], name: str) -> int | None:
    """The sum of `name` over the clients that reported it; None when none did (under DP, or the feature off)."""
    values = [m[name] for m in metrics if name in m]
    return int(sum(values)) if values else None
