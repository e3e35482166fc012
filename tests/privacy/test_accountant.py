"""Tests of privacy accounting: a published figure, closed forms, and agreement with dp-accounting."""

from __future__ import annotations

import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from scipy import optimize, stats

from fedlm.privacy.accountant import (
    ACCOUNTANTS,
    RDP_ORDERS,
    effective_noise_multiplier,
    epsilon,
    epsilon_of,
    epsilon_without_sampling,
    gaussian_round_event,
    make_accountant,
    poisson_rounds_event,
    update_noise_for,
)

DELTA = 1e-5


def _poisson(z: float, q: float) -> dp_accounting.DpEvent:
    return gaussian_round_event(noise_multiplier=z, sampling="poisson", sample_rate=q)


def _fixed(z: float, population: int, cohort: int) -> dp_accounting.DpEvent:
    return gaussian_round_event(noise_multiplier=z, sampling="fixed", population=population, cohort=cohort)


def _analytic_gaussian_epsilon(z: float, delta: float) -> float:
    """Exact epsilon of one Gaussian, sensitivity 1, std z (Balle & Wang 2018, arXiv:1805.06530, Thm. 8):
    delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z), decreasing in eps."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(0.5 / z - eps * z) - math.exp(eps) * stats.norm.cdf(-0.5 / z - eps * z) - delta
    return optimize.brentq(gap, 0.0, 100.0, xtol=1e-12)


# --- a published figure -------------------------------------------------------------------


def test_reproduces_tensorflow_privacy_published_mnist_epsilon():
    # Source: TensorFlow Privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy.py
    # (module docstring) and tutorials/README.md ("Select Parameters", first row): with
    # --N=60000 --batch_size=256 --noise_multiplier=1.12 --epochs=60 --delta=1e-5,
    # "DP-SGD with these parameters satisfies (2.92, 1e-5)-DP".
    # The script used q = 256/60000, steps = ceil(60 * 60000 / 256) = 14063, the orders below,
    # and the RDP -> (eps, delta) conversion of Mironov 2017 (arXiv:1702.07476, Prop. 3).
    # Tolerance 0.005: the figure was printed to 3 significant digits.
    # Prepare
    q, steps = 256 / 60000, math.ceil(60 * 60000 / 256)
    tf_orders = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, *range(5, 64), 128, 256, 512]
    accountant = RdpAccountant(orders=tf_orders)
    # Execute: dp-accounting's RDP of our event, then the 2019 conversion
    accountant.compose(poisson_rounds_event(noise_multiplier=1.12, sample_rate=q, rounds=steps))
    basic = min(r + math.log(1 / DELTA) / (a - 1) for a, r in zip(tf_orders, accountant.rdp, strict=True))
    ours = epsilon(noise_multiplier=1.12, sample_rate=q, rounds=steps, delta=DELTA)
    # Assert
    assert abs(basic - 2.92) <= 0.005
    # dp-accounting's conversion (Canonne, Kamath, Steinke 2020) is tighter than the 2019 one
    assert 2.4 < ours < 2.92


# --- closed forms -------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.7, 1.0, 2.0, 5.0])
def test_plain_gaussian_rdp_is_alpha_over_two_z_squared(z: float):
    # Prepare: q = 1, one round: no amplification
    orders = np.array(RDP_ORDERS)
    rdp_closed = orders / (2 * z**2)
    # Execute
    accountant = make_accountant("rdp").compose(_poisson(z, 1.0))
    eps = epsilon(noise_multiplier=z, sample_rate=1.0, rounds=1, delta=DELTA)
    # Assert
    np.testing.assert_allclose(accountant.rdp, rdp_closed, rtol=1e-12)
    # the conversion dp-accounting uses (Canonne, Kamath, Steinke 2020, Prop. 12), over the same orders
    usable = orders > 1.01
    improved = rdp_closed + np.log1p(-1 / orders) - np.log(DELTA * orders) / (orders - 1)
    assert eps == pytest.approx(max(0.0, improved[usable].min()), rel=1e-12)
    # no worse than Mironov 2017's bound, and no better than the exact analytic Gaussian
    basic = (rdp_closed + math.log(1 / DELTA) / (orders - 1)).min()
    assert eps <= basic
    assert eps >= _analytic_gaussian_epsilon(z, DELTA)


@pytest.mark.parametrize("z", [0.7, 1.0, 2.0])
def test_pld_of_plain_gaussian_matches_analytic_gaussian(z: float):
    # PLD is exact up to its discretisation (interval 1e-4, pessimistic): a few 1e-4 above at most
    exact = _analytic_gaussian_epsilon(z, DELTA)
    eps = epsilon(noise_multiplier=z, sample_rate=1.0, rounds=1, delta=DELTA, accountant="pld")
    assert exact - 1e-6 <= eps <= exact + 1e-3


@pytest.mark.parametrize(("z", "q", "rounds"), [(0.8, 0.05, 20), (2.0, 0.2, 10), (1.5, 1.0, 3)])
def test_pld_is_no_looser_than_rdp(z: float, q: float, rounds: int):
    rdp = epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=DELTA, accountant="rdp")
    pld = epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=DELTA, accountant="pld")
    assert 0 < pld <= rdp


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    # Prepare
    noises, rounds = [0.8, 1.0, 1.5, 3.0], [1, 10, 100]
    # Execute
    grid = np.array([[epsilon(noise_multiplier=z, sample_rate=0.05, rounds=t, delta=DELTA) for t in rounds]
                     for z in noises])
    # Assert
    assert np.all(np.diff(grid, axis=1) > 0)  # more rounds, more epsilon
    assert np.all(np.diff(grid, axis=0) < 0)  # more noise, less epsilon


# --- agreement with dp-accounting -----------------------------------------------------------


@pytest.mark.parametrize("name", ACCOUNTANTS)
def test_epsilon_of_a_round_list_equals_dp_accounting_directly(name: str):
    # Prepare: rounds at two noise levels, interleaved (equal rounds are grouped: composition commutes)
    events = [_poisson(2.0, 0.2), _poisson(1.0, 1.0), _poisson(2.0, 0.2), _poisson(3.0, 1.0)]
    direct = RdpAccountant() if name == "rdp" else PLDAccountant()
    for event in events:
        direct.compose(event)
    # Execute
    eps = epsilon_of(events, delta=DELTA, accountant=name)
    # Assert
    assert eps == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)


def test_skipped_rdp_orders_are_not_logged(caplog: pytest.LogCaptureFixture):
    # dp-accounting drops RDP orders 1.1-1.5 here (its series does not converge) and warns per order
    with caplog.at_level(logging.WARNING, logger="absl"):
        eps = epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=DELTA)
    assert eps > 0
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert not logging.getLogger("absl").filters  # the filter lives only as long as the call


def test_no_events_cost_nothing():
    assert epsilon_of([], delta=DELTA) == 0.0
    assert epsilon_of([], delta=DELTA, accountant="pld") == 0.0


def test_make_accountant_builds_fresh_accountants():
    rdp, pld = make_accountant("rdp"), make_accountant("pld")
    assert isinstance(rdp, RdpAccountant) and list(rdp.orders) == list(RDP_ORDERS)
    assert isinstance(pld, PLDAccountant)
    assert isinstance(rdp.ledger, dp_accounting.NoOpDpEvent)
    with pytest.raises(ValueError, match="accountant"):
        make_accountant("gdp")


# --- round events -------------------------------------------------------------------------


def test_poisson_round_event_is_a_sampled_gaussian():
    assert _poisson(1.2, 0.03) == dp_accounting.PoissonSampledDpEvent(0.03, dp_accounting.GaussianDpEvent(1.2))


def test_fixed_round_event_halves_the_multiplier_for_replace_one_sensitivity():
    # replace-one: one client's clipped update swapped for another moves the sum by up to 2C
    event = _fixed(1.2, 1000, 10)
    assert event == dp_accounting.SampledWithoutReplacementDpEvent(1000, 10, dp_accounting.GaussianDpEvent(0.6))


def test_fixed_cohort_of_everyone_costs_a_gaussian_of_sensitivity_two():
    # Prepare: cohort = population: no amplification; RDP of N(0, z^2) on sensitivity 2 is 2 alpha / z^2
    z = 2.0
    orders = np.array(RDP_ORDERS)
    usable = orders > 1.01
    improved = 2 * orders / z**2 + np.log1p(-1 / orders) - np.log(DELTA * orders) / (orders - 1)
    # Execute
    eps = epsilon_of([_fixed(z, 50, 50)], delta=DELTA)
    # Assert
    assert eps == pytest.approx(improved[usable].min(), rel=1e-12)


def test_fixed_sampling_amplifies_and_composes_under_rdp():
    one = epsilon_of([_fixed(1.0, 1000, 10)], delta=DELTA)
    ten = epsilon_of([_fixed(1.0, 1000, 10)] * 10, delta=DELTA)
    whole = epsilon_of([_fixed(1.0, 1000, 1000)], delta=DELTA)
    assert 0 < one < ten and one < whole


def test_pld_refuses_fixed_size_sampling_and_says_use_rdp():
    # dp-accounting 0.6.0's PLD accountant has no SampledWithoutReplacementDpEvent support
    assert not PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE).supports(_fixed(1.0, 100, 10))
    with pytest.raises(ValueError, match="accountant='rdp'"):
        epsilon_of([_fixed(1.0, 100, 10)], delta=DELTA, accountant="pld")


def test_poisson_and_fixed_rounds_do_not_compose():
    with pytest.raises(ValueError, match="neighbouring relations"):
        epsilon_of([_poisson(1.0, 0.1), _fixed(1.0, 100, 10)], delta=DELTA)


def test_unused_sampling_arguments_are_ignored():
    # callers pass their whole config; only the chosen sampling's arguments count
    assert gaussian_round_event(noise_multiplier=1.0, sampling="fixed", sample_rate=0.0, population=9, cohort=3) \
        == _fixed(1.0, 9, 3)
    assert gaussian_round_event(noise_multiplier=1.0, sampling="poisson", sample_rate=0.5, population=0, cohort=0) \
        == _poisson(1.0, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"sampling": "sometimes"}, "sampling"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sampling": "fixed", "population": 0, "cohort": 1}, "population"),
        ({"sampling": "fixed", "population": 10, "cohort": 0}, "cohort"),
        ({"sampling": "fixed", "population": 10, "cohort": 11}, "cohort"),
        ({"sampling": "fixed", "population": 10.0, "cohort": 2}, "population"),
    ],
)
def test_round_event_rejects_bad_arguments_by_name(kwargs: dict, name: str):
    arguments = {"noise_multiplier": 1.0, "sampling": "poisson", "sample_rate": 0.1} | kwargs
    with pytest.raises(ValueError, match=name):
        gaussian_round_event(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"delta": math.nan}, "delta"),
     ({"rounds": 0}, "rounds"), ({"rounds": 2.5}, "rounds"), ({"accountant": "gdp"}, "accountant")],
)
def test_epsilon_rejects_bad_arguments_by_name(kwargs: dict, name: str):
    arguments = {"noise_multiplier": 1.0, "sample_rate": 0.1, "rounds": 10, "delta": DELTA} | kwargs
    with pytest.raises(ValueError, match=name):
        epsilon(**arguments)


def test_epsilon_of_rejects_non_events():
    with pytest.raises(ValueError, match="DpEvent"):
        epsilon_of([1.0], delta=DELTA)


# --- adaptive clipping's count ------------------------------------------------------------------


def test_effective_noise_multiplier_by_hand():
    # z = (1^-2 + (2 * 5)^-2)^(-1/2) = (1 + 0.01)^(-1/2)
    assert effective_noise_multiplier(1.0, 5.0) == pytest.approx((1 + 0.01) ** -0.5, rel=1e-15)
    # z = (2^-2 + 2^-2)^(-1/2) = sqrt(2)
    assert effective_noise_multiplier(2.0, 1.0) == pytest.approx(math.sqrt(2), rel=1e-15)


@pytest.mark.parametrize("update", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("count", [1.0, 5.0, 40.0])
def test_update_noise_for_inverts_effective_noise_multiplier(update: float, count: float):
    total = effective_noise_multiplier(update, count)
    assert total < update  # the count costs something
    assert update_noise_for(total, count) == pytest.approx(update, rel=1e-12)
    assert effective_noise_multiplier(update_noise_for(1.0, count + 1), count + 1) == pytest.approx(1.0, rel=1e-12)


def test_update_noise_for_says_to_raise_count_noise():
    # 2 * 0.5 = 1 <= total 1.2: the count alone already spends past the budget
    with pytest.raises(ValueError, match="raise count_noise above 0.6"):
        update_noise_for(1.2, 0.5)
    with pytest.raises(ValueError, match="count_noise"):
        update_noise_for(1.0, 0.5)  # exactly at the limit: the update would need infinite noise


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_noise_pair_rejects_bad_values(bad: float):
    for call, names in ((effective_noise_multiplier, ("update_noise", "count_noise")),
                        (update_noise_for, ("total_noise", "count_noise"))):
        with pytest.raises(ValueError, match=names[0]):
            call(bad, 10.0)
        with pytest.raises(ValueError, match=names[1]):
            call(1.0, bad)


def _gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """epsilon of mu-GDP at delta (Dong, Roth, Su 2019): delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(gap, 0.0, 200.0, xtol=1e-12)


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_epsilon_without_sampling_is_t_plain_gaussians_whatever_the_sampling(sampling: str):
    # Prepare: 5 rounds at z = 2, sampled either way; without the sampling credit each is a Gaussian of
    # multiplier 2 on add/remove-one neighbours, so the 5 compose to mu = sqrt(5) / 2 Gaussian DP.
    z, rounds = 2.0, 5
    event = _poisson(z, 0.1) if sampling == "poisson" else _fixed(z, 100, 10)
    # Execute
    eps = epsilon_without_sampling([event] * rounds, delta=DELTA, accountant="pld")
    # Assert: the closed form, to PLD's discretisation; and more than the sampled figure
    assert eps == pytest.approx(_gaussian_dp_epsilon(math.sqrt(rounds) / z, DELTA), abs=2e-3)
    assert eps > epsilon_of([event] * rounds, delta=DELTA, accountant="rdp" if sampling == "fixed" else "pld")
    with pytest.raises(ValueError, match="not a sampled Gaussian round"):
        epsilon_without_sampling([dp_accounting.GaussianDpEvent(z)], delta=DELTA)
