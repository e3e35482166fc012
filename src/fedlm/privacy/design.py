"""Pick a user-level DP design before spending compute: noise, noise on the mean, and predicted SNR per mode.

Three designs reach the same (epsilon, delta) over T rounds of N clients:
- "poisson": DP-FedAvg, each client joins a round with probability q (Abadi et al. 2016,
  arXiv:1607.00133; McMahan, Ramage, Talwar, Zhang 2018, arXiv:1710.06963); z calibrated by
  fedlm.privacy.calibrate through dp-accounting.
- "full": every client in every round (q = 1). T Gaussian rounds of multiplier z compose exactly to
  mu-GDP with mu = sqrt(T) / z (Dong, Roth, Su 2019, "Gaussian Differential Privacy",
  arXiv:1905.02383, Cor. 3.3), whose (epsilon, delta) curve is closed-form (Cor. 2.13):
  delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). z is solved from it exactly;
  the PLD accountant's epsilon at that z is reported as the check (they agree to about 1e-8).
- "banded_mf": banded matrix-factorization DP-FTRL (Choquette-Choo et al. 2023, arXiv:2306.08153)
  with cyclic participation, each client once every b rounds (see fedlm.privacy.banded); the whole
  run is one Gaussian mechanism with the same mu as "full".

Per round, the released mean of clipped updates carries noise std z C / K (K the expected cohort),
of expected norm std sqrt(P) over P coordinates; an update of norm rho C (rho: the clipped update's
share of the clip norm) gives SNR = rho C / (std sqrt(P)) = rho K / (z sqrt(P)). Under full
participation that is mu N rho / sqrt(T P); over T aligned rounds the signal adds T-fold and the
noise sqrt(T)-fold, so the run's SNR is sqrt(T) times that: mu N rho / sqrt(P). For MF the per-round
std is the independent std with the same total squared error on the T prefix sums (the models).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import dp_accounting
from scipy import optimize, stats

from fedlm.privacy import banded
from fedlm.privacy.accountant import check_accountant, check_delta, check_positive, epsilon, epsilon_of
from fedlm.privacy.calibrate import calibrate_noise
from fedlm.privacy.plan import default_delta

MODES = ("poisson", "full", "banded_mf")


@dataclass(frozen=True)
class ModePlan:
    mode: str
    cohort: float  # expected clients per round
    sample_rate: float  # each client's chance to train in a given round
    noise_multiplier: float  # z: noise std on each released sum row / clip norm
    epsilon: float  # the accountant's epsilon at z: the check that the target is met
    std_on_mean: float  # per-round noise std on each coordinate of the mean update (MF: equivalent)
    noise_norm_on_mean: float  # std_on_mean * sqrt(P)
    snr: float  # rho C / noise_norm_on_mean, per round
    run_snr: float  # sqrt(T) * snr: T aligned rounds
    bands: int = 0  # banded_mf only
    error_ratio: float = 1.0  # banded_mf: prefix-sum error over independent noise, same participation


@dataclass(frozen=True)
class Design:
    clients: int
    rounds: int
    params: int
    target_epsilon: float
    delta: float
    clip_norm: float
    update_norm_share: float
    accountant: str  # the poisson mode's; "full" and "banded_mf" are exact GDP, checked by PLD
    mu: float  # the Gaussian-DP parameter that meets (target_epsilon, delta)
    modes: tuple[ModePlan, ...]
    notes: tuple[str, ...]

    @property
    def recommended(self) -> ModePlan:
        """The mode with the highest SNR; a tie goes to the mode earlier in MODES (full before banded_mf)."""
        return max(self.modes, key=lambda plan: (round(plan.snr, 9), -MODES.index(plan.mode)))


def gaussian_dp_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-GDP (Dong, Roth, Su 2019, Cor. 2.13); e^eps Phi(.) taken in logs."""
    second = math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))
    return float(stats.norm.cdf(-eps / mu + mu / 2) - second)


def gaussian_dp_mu(target_epsilon: float, delta: float) -> float:
    """The mu whose mu-GDP is (target_epsilon, delta)-DP exactly; delta(eps) rises with mu."""
    eps = check_positive("target_epsilon", target_epsilon)
    check_delta(delta)
    high = 1.0
    while gaussian_dp_delta(high, eps) < delta:
        high *= 2
    low = high / 2
    while gaussian_dp_delta(low, eps) > delta:
        low /= 2
    return optimize.brentq(lambda mu: gaussian_dp_delta(mu, eps) - delta, low, high, xtol=1e-15, rtol=1e-14)


def make_design(
    *, clients: int, rounds: int, params: int, target_epsilon: float, delta: float | None = None,
    clip_norm: float = 1.0, cohort: int | None = None, sample_rate: float | None = None,
    update_norm_share: float = 1.0, bands: int | None = None, accountant: str = "pld",
) -> Design:
    """Each applicable mode's noise and predicted SNR at `target_epsilon` over `rounds` rounds."""
    clients, rounds, params = _count("clients", clients), _count("rounds", rounds), _count("params", params)
    eps, clip = check_positive("target_epsilon", target_epsilon), check_positive("clip_norm", clip_norm)
    rho = check_positive("update_norm_share", update_norm_share)
    if rho > 1:
        raise ValueError(f"update_norm_share must be in (0, 1] (a share of the clip norm), got {rho:g}")
    check_accountant(accountant)
    delta = _delta(delta, clients)
    q = _sample_rate(cohort, sample_rate, clients)
    given_bands = bands is not None
    bands = _bands(bands, q, clients, rounds)
    mu = gaussian_dp_mu(eps, delta)
    frame = _Frame(rounds=rounds, params=params, clip=clip, signal=rho * clip)
    modes, notes = [], []
    if q is None:
        notes.append("poisson: not planned; give --cohort or --sample-rate")
    elif q < 1:
        modes.append(_poisson(frame, q=q, clients=clients, eps=eps, delta=delta, accountant=accountant))
    else:
        notes.append("poisson: not planned; q = 1 is full participation")
    modes.append(_full(frame, clients=clients, mu=mu, delta=delta))
    if bands is None:
        reason = "rounds = 1" if rounds == 1 else "give --bands or --cohort"
        notes.append(f"banded_mf: not planned; it needs clients that return over several rounds ({reason})")
    elif bands == 1 and not given_bands:
        notes.append("banded_mf: not planned; 1 band (every client every round) is full participation")
    else:
        modes.append(_banded(frame, bands=bands, clients=clients, mu=mu, delta=delta))
    return Design(clients=clients, rounds=rounds, params=params, target_epsilon=eps, delta=delta, clip_norm=clip,
                  update_norm_share=rho, accountant=accountant, mu=mu, modes=tuple(modes), notes=tuple(notes))


@dataclass(frozen=True)
class _Frame:
    """What every mode shares: T, P, the clip norm C and the signal rho C."""
    rounds: int
    params: int
    clip: float
    signal: float

    def mode(self, name: str, *, cohort: float, sample_rate: float, z: float, eps: float,
             std_factor: float = 1.0, bands: int = 0, error_ratio: float = 1.0) -> ModePlan:
        std = z * self.clip / cohort * std_factor
        norm = std * math.sqrt(self.params)
        return ModePlan(mode=name, cohort=cohort, sample_rate=sample_rate, noise_multiplier=z, epsilon=eps,
                        std_on_mean=std, noise_norm_on_mean=norm, snr=self.signal / norm,
                        run_snr=math.sqrt(self.rounds) * self.signal / norm, bands=bands, error_ratio=error_ratio)


def _poisson(frame: _Frame, *, q: float, clients: int, eps: float, delta: float, accountant: str) -> ModePlan:
    """z from fedlm's calibration (least z within the target, to 1e-3)."""
    z = calibrate_noise(target_epsilon=eps, sample_rate=q, rounds=frame.rounds, delta=delta, accountant=accountant)
    spent = epsilon(noise_multiplier=z, sample_rate=q, rounds=frame.rounds, delta=delta, accountant=accountant)
    return frame.mode("poisson", cohort=q * clients, sample_rate=q, z=z, eps=spent)


def _full(frame: _Frame, *, clients: int, mu: float, delta: float) -> ModePlan:
    """z = sqrt(T) / mu exactly; the PLD accountant's epsilon at that z is the check."""
    z = math.sqrt(frame.rounds) / mu
    spent = epsilon(noise_multiplier=z, sample_rate=1.0, rounds=frame.rounds, delta=delta, accountant="pld")
    return frame.mode("full", cohort=clients, sample_rate=1.0, z=z, eps=spent)


def _banded(frame: _Frame, *, bands: int, clients: int, mu: float, delta: float) -> ModePlan:
    """Cyclic groups of floor(N / b) clients (the smallest group sets the noise on the mean)."""
    rounds = frame.rounds
    coefficients = banded.optimal_banded_coefficients(rounds, bands)
    sensitivity = banded.cyclic_sensitivity(coefficients, rounds, bands)
    error = banded.prefix_sum_error(coefficients, rounds)
    independent = banded.independent_error(rounds)
    participations = len(banded.participations(rounds, bands))
    # The whole release is one Gaussian of multiplier 1 / mu: its PLD epsilon is the check.
    spent = epsilon_of([dp_accounting.GaussianDpEvent(1 / mu)], delta=delta, accountant="pld")
    return frame.mode("banded_mf", cohort=clients // bands, sample_rate=1 / bands, z=sensitivity / mu, eps=spent,
                      std_factor=math.sqrt(error / independent), bands=bands,
                      error_ratio=sensitivity**2 * error / (participations * independent))


def _delta(delta: float | None, clients: int) -> float:
    value = default_delta(clients) if delta is None else check_delta(delta)
    if value >= 1 / clients:
        raise ValueError(
            f"delta must be below 1/N = {1 / clients:g} for user-level DP with N = {clients}, got {value:g}")
    return value


def _sample_rate(cohort: int | None, sample_rate: float | None, clients: int) -> float | None:
    if cohort is not None and sample_rate is not None:
        raise ValueError("give cohort or sample_rate, not both")
    if cohort is not None:
        cohort = _count("cohort", cohort)
        if cohort > clients:
            raise ValueError(f"cohort must be <= clients ({clients}), got {cohort}")
        return cohort / clients
    if sample_rate is not None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        return float(sample_rate)
    return None


def _bands(bands: int | None, q: float | None, clients: int, rounds: int) -> int | None:
    """Given, or 1/q (MF at the sampling mode's cohort), within [1, min(T, N)]; None where MF cannot apply."""
    if bands is not None:
        bands = _count("bands", bands)
        if bands > min(rounds, clients):
            raise ValueError(f"bands must be <= rounds ({rounds}) and <= clients ({clients}), got {bands}")
        return bands
    if rounds == 1 or q is None:
        return None
    return max(1, min(rounds, clients, round(1 / q)))


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
