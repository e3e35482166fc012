"""Privacy accounting for DP-FedAvg rounds, over Google's dp-accounting.

Each round of user-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, arXiv:1710.06963)
is a sampled Gaussian mechanism whose "records" are clients. This module only describes
rounds as `dp_accounting.DpEvent`s and asks an accountant to compose them; epsilon is never
derived from counters.

Accountants:
- "rdp": Renyi DP (Mironov 2017, arXiv:1702.07476) with the subsampled-Gaussian bound of
  Mironov, Talwar, Zhang 2019 (arXiv:1908.10530); fixed-size cohorts use Wang, Balle,
  Kasiviswanathan 2019 (arXiv:1808.00087). dp-accounting converts RDP to (epsilon, delta)
  with the improved bound of Canonne, Kamath, Steinke 2020 (arXiv:2004.00010, Prop. 12).
- "pld": privacy loss distributions (Koskela, Jalko, Honkela 2020, arXiv:1906.03049;
  Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022, "Connect the dots", arXiv:2207.04380):
  tighter, slower, and slow at small noise multipliers (z < 0.3 takes seconds per epsilon).

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, arXiv:1905.03871, Sec. 3) also
releases a noised count; `effective_noise_multiplier` folds it into the round's one Gaussian.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dp_accounting
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")

# dp-accounting's own list: fine steps on (1, 11) where the optimum lies for epsilon of a few
# units, integers to 63, then powers of two to 1024 for very small epsilon.
RDP_ORDERS: tuple[float, ...] = tuple(DEFAULT_RDP_ORDERS)

# dp-accounting's RDP series for fractional orders near 1 sometimes fails to converge (q around 0.1
# and up); it then drops that order, which is sound (epsilon can only grow) but logs a warning per
# order per call. A run recomputes epsilon every round, so those warnings are silenced here.
_UNCONVERGED = "_compute_log_a_frac failed to converge"

PLD_FIXED_SAMPLING = (
    "the pld accountant of dp-accounting cannot account for fixed-size (without replacement) "
    "sampling; use accountant='rdp' or Poisson sampling"
)


def gaussian_round_event(
    *, noise_multiplier: float, sampling: str, sample_rate: float = 0.0, population: int = 0, cohort: int = 0
) -> dp_accounting.DpEvent:
    """One round: a sampled Gaussian on the sum of clipped updates, noise std = noise_multiplier * clip_norm.

    "poisson": each client joins with probability `sample_rate`; add/remove-one neighbours,
    sensitivity clip_norm. "fixed": `cohort` of `population` clients uniformly without
    replacement; dp-accounting accounts for that only under replace-one neighbours, where
    swapping one client's update moves the sum by up to 2 * clip_norm, so the event carries
    noise_multiplier / 2 (the std relative to that sensitivity). Arguments the chosen
    sampling does not use are ignored.
    """
    z = check_positive("noise_multiplier", noise_multiplier)
    if sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(_rate("sample_rate", sample_rate), dp_accounting.GaussianDpEvent(z))
    if sampling == "fixed":
        population = _count("population", population, minimum=1)
        cohort = _count("cohort", cohort, minimum=1)
        if cohort > population:
            raise ValueError(f"cohort must be <= population ({population}), got {cohort}")
        return dp_accounting.SampledWithoutReplacementDpEvent(population, cohort, dp_accounting.GaussianDpEvent(z / 2))
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def poisson_rounds_event(*, noise_multiplier: float, sample_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """`rounds` identical Poisson-sampled Gaussian rounds."""
    round_event = gaussian_round_event(noise_multiplier=noise_multiplier, sampling="poisson", sample_rate=sample_rate)
    return dp_accounting.SelfComposedDpEvent(round_event, _count("rounds", rounds, minimum=1))


def effective_noise_multiplier(update_noise: float, count_noise: float) -> float:
    """z of the one Gaussian equivalent to releasing the noised update sum and the noised count.

    `update_noise` is z_update (std / clip_norm); `count_noise` is sigma_b, the std of the noise
    on the sum of the clients' centred unclipped bits (sensitivity 1/2), so its multiplier is
    2 * sigma_b. Andrew et al. 2021, Sec. 3: z = (z_update^-2 + (2 sigma_b)^-2)^(-1/2).
    """
    update = check_positive("update_noise", update_noise)
    count = check_positive("count_noise", count_noise)
    return (update**-2 + (2 * count) ** -2) ** -0.5


def update_noise_for(total_noise: float, count_noise: float) -> float:
    """The update's noise multiplier so that update and count together cost exactly `total_noise`."""
    total = check_positive("total_noise", total_noise)
    count = check_positive("count_noise", count_noise)
    if 2 * count <= total:
        raise ValueError(
            f"count_noise={count:g} is too small for total_noise={total:g}: the count alone costs noise "
            f"multiplier 2 * count_noise = {2 * count:g}, not above the budget; raise count_noise above "
            f"{total / 2:g} (or lower total_noise)"
        )
    return (total**-2 - (2 * count) ** -2) ** -0.5


def make_accountant(
    name: str, *, relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE
) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant: "rdp" over `RDP_ORDERS`, or "pld" at dp-accounting's default discretisation."""
    check_accountant(name)
    if name == "rdp":
        return RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
    return PLDAccountant(neighboring_relation=relation)


def neighboring_relation(events: Sequence[dp_accounting.DpEvent]) -> NeighboringRelation:
    """Replace-one if any event samples a fixed-size cohort, else add/remove-one; both at once is an error."""
    kinds = set().union(*(_samplings(event) for event in events))
    if len(kinds) > 1:
        raise ValueError(
            "Poisson and fixed-size sampled rounds cannot be composed: dp-accounting accounts for them "
            "under different neighbouring relations (add/remove-one vs replace-one); use one sampling per run"
        )
    return NeighboringRelation.REPLACE_ONE if kinds == {"fixed"} else NeighboringRelation.ADD_OR_REMOVE_ONE


def epsilon_of(events: Sequence[dp_accounting.DpEvent], *, delta: float, accountant: str = "rdp") -> float:
    """epsilon at `delta` of all `events` composed, by a fresh dp-accounting accountant; no events cost 0."""
    check_delta(delta)
    check_accountant(accountant)
    events = tuple(events)
    for event in events:
        if not isinstance(event, dp_accounting.DpEvent):
            raise ValueError(f"events must be dp_accounting DpEvents, got {type(event).__name__}")
    if not events:
        return 0.0
    relation = neighboring_relation(events)
    composed = _grouped(events)
    privacy = make_accountant(accountant, relation=relation)
    if not privacy.supports(composed):
        if accountant == "pld" and relation is NeighboringRelation.REPLACE_ONE:
            raise ValueError(PLD_FIXED_SAMPLING)
        raise ValueError(f"the {accountant} accountant cannot account for {composed}")
    with quiet_unconverged_orders():
        return float(privacy.compose(composed).get_epsilon(delta))


def unsampled(event: dp_accounting.DpEvent) -> dp_accounting.GaussianDpEvent:
    """A recorded round's Gaussian release as if the client surely took part (add/remove-one neighbours).

    Sampling amplifies privacy only if the cohort really is a uniform sample; without that
    assumption a client may take part in every round, and each round is a Gaussian mechanism of
    noise multiplier z on a sum it moves by at most the clip norm. A fixed-size round is stored
    under replace-one neighbours with z / 2 (see gaussian_round_event), so its z is twice that.
    """
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and isinstance(event.event, dp_accounting.GaussianDpEvent):
        return event.event
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent) and isinstance(event.event, dp_accounting.GaussianDpEvent):
        return dp_accounting.GaussianDpEvent(2 * event.event.noise_multiplier)
    raise ValueError(f"not a sampled Gaussian round: {event}")


def epsilon_without_sampling(events: Sequence[dp_accounting.DpEvent], *, delta: float, accountant: str = "rdp") -> float:
    """epsilon at `delta` of the recorded rounds with no credit for sampling: it holds however cohorts were chosen."""
    return epsilon_of([unsampled(event) for event in events], delta=delta, accountant=accountant)


def epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """epsilon after `rounds` Poisson-sampled Gaussian rounds."""
    event = poisson_rounds_event(noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=rounds)
    return epsilon_of([event], delta=delta, accountant=accountant)


def check_delta(delta: float) -> float:
    """delta must lie in (0, 1)."""
    value = _real("delta", delta)
    if not 0 < value < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return value


def check_accountant(name: str) -> str:
    """`name` must be one of ACCOUNTANTS."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")
    return name


def check_positive(name: str, value: float) -> float:
    """`value` must be a finite number above 0; the error names `name`."""
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value:g}")
    return value


def _grouped(events: Sequence[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
    """One event: each distinct event self-composed as often as it occurs.

    Composition commutes (RDP adds, PLDs convolve), so grouping equal rounds wherever they occur
    changes nothing but the cost: each distinct round is analysed once, not once per occurrence.
    """
    distinct: list[list] = []  # [event, count]; a list, since ComposedDpEvent is not hashable
    for event in events:
        for seen in distinct:
            if seen[0] == event:
                seen[1] += 1
                break
        else:
            distinct.append([event, 1])
    parts = [event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count) for event, count in distinct]
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)


@contextmanager
def quiet_unconverged_orders() -> Iterator[None]:
    """Within this block, drop dp-accounting's warnings about RDP orders it had to skip (see _UNCONVERGED)."""
    absl = logging.getLogger("absl")
    absl.addFilter(_drop_unconverged)
    try:
        yield
    finally:
        absl.removeFilter(_drop_unconverged)


def _drop_unconverged(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_UNCONVERGED)


def _samplings(event: dp_accounting.DpEvent) -> set[str]:
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return {"poisson"} | _samplings(event.event)
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return {"fixed"} | _samplings(event.event)
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _samplings(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return set().union(*(_samplings(inner) for inner in event.events))
    return set()


def _real(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _rate(name: str, value: float) -> float:
    value = _real(name, value)
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value:g}")
    return value


def _count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
