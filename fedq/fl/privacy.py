"""User-level differential privacy: DP-FedAvg (McMahan et al., ICLR 2018) with fixed clipping and central noise.

``fl.dp.clip`` C bounds what one client can change: each client clips its
update to norm C *before* its codec quantizes it (so the bound acts on what is
sent, and quantization error is measured against the clipped update), and the
server clips each *decoded* update to C again, since stochastic rounding can
leave a decoded update a little longer than what was clipped. The server's part
is Flower's ``DifferentialPrivacyServerSideFixedClipping`` around FedAvg
(``server/aggregation.py``): it clips, averages with equal weights (a client's
token count would leak and change its sensitivity) and adds Gaussian noise of
standard deviation z x C / clients_per_round to the average, once a round.
Flower's ``fixedclipping_mod`` cannot do the client's part: it clips the arrays
of the reply, which in fedq are the codec's payload, not the update.

With ``fl.dp.target_quantile`` the norm adapts (Andrew et al., NeurIPS 2021):
each client reports whether its update was within the round's norm, and the
server moves the norm by exp(-``fl.dp.clip_lr`` x (b - target)), b the noised
fraction of unclipped updates (noise of stddev clients_per_round / 20 on the
count, the paper's default); the updates' noise multiplier is raised so that
both releases together spend what z alone would. Flower's adaptive-clipping wrappers are
not used: in Flower 1.42 they step the norm by the fraction of *clipped*
updates, so a norm below every update shrinks further each round (measured:
0.1 -> 0.0135 in 20 rounds against updates of norm ~10).

The privacy spent is accounted by Opacus's RDP accountant for the sampled
Gaussian mechanism (sampling rate q = clients_per_round / clients, one step a
round) and stated as epsilon at ``fl.dp.delta`` (default 1 / clients) with
every round's row and in the summary. ``fl.dp.target_epsilon`` instead chooses
the z that spends that epsilon over ``fl.rounds`` (Opacus's
``get_noise_multiplier``). The accountant assumes Poisson sampling; fedq draws
a fixed-size cohort, as DP-FedAvg's own experiments do.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from fedq.errors import ConfigError
from fedq.fl.settings import FLConfig, clients_per_round

MAX_NOISE_MULTIPLIER = 100.0  # a target epsilon that needs more noise than this learns nothing: refused


def dp_enabled(fl: FLConfig) -> bool:
    """Whether the run adds noise (clipping alone states no epsilon)."""
    return fl.dp.noise_multiplier > 0 or fl.dp.target_epsilon > 0


def sampling_rate(fl: FLConfig) -> float:
    return clients_per_round(fl) / fl.clients


def dp_delta(fl: FLConfig) -> float:
    return fl.dp.delta or 1.0 / fl.clients


def noise_multiplier(fl: FLConfig) -> float:
    """z: ``fl.dp.noise_multiplier``, or the one that spends ``fl.dp.target_epsilon`` in ``fl.rounds`` rounds."""
    if not fl.dp.target_epsilon:
        return fl.dp.noise_multiplier
    return _noise_for_target(fl.dp.target_epsilon, dp_delta(fl), sampling_rate(fl), fl.rounds)


@functools.lru_cache(maxsize=16)
def _noise_for_target(target_epsilon: float, delta: float, rate: float, rounds: int) -> float:
    """Opacus's search for z (up to a second): once per setting and process, however many readers ask (validation,
    the aggregator, the reporter)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, only looser
        warnings.simplefilter("ignore", UserWarning)
        try:
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=rate,
                                              steps=rounds, accountant="rdp",
                                              epsilon_tolerance=min(0.005, target_epsilon / 100)))
        except ValueError:  # Opacus: "The privacy budget is too low" (no noise it tries reaches the target)
            return math.inf


def epsilon(fl: FLConfig, rounds: int, z: float | None = None) -> float:
    """Epsilon at ``dp_delta(fl)`` after ``rounds`` rounds of the sampled Gaussian mechanism with noise ``z``."""
    from opacus.accountants import RDPAccountant

    z = noise_multiplier(fl) if z is None else z
    if rounds == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(z, sampling_rate(fl), rounds)]  # what `rounds` calls of accountant.step() would record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return max(0.0, float(accountant.get_epsilon(dp_delta(fl))))  # the RDP bound can dip below 0 at huge noise


def clip_to_norm(update: np.ndarray, bound: float) -> tuple[np.ndarray, bool]:
    """(``update`` scaled down to L2 norm ``bound`` if it is longer (a copy), else itself; whether it was within)."""
    norm = float(np.linalg.norm(update))
    if norm <= bound:
        return update, True
    return (update * np.float32(bound / norm)).astype(update.dtype), False


def check_privacy(fl: FLConfig, plain_mean: bool, defence: str, partial_uplink: str | None) -> None:
    """Refuse DP settings that cannot hold their guarantee, with one line, before any work (``partial_uplink``: the
    uplink codec's name where it leaves values unsent for the server to fill, else None)."""
    dp = fl.dp
    for name in ("clip", "noise_multiplier", "target_epsilon", "delta"):
        if getattr(dp, name) < 0:
            raise ConfigError(f"fl.dp.{name}={getattr(dp, name)} must be >= 0")
    if not 0 <= dp.target_quantile < 1 or dp.clip_lr <= 0:
        raise ConfigError(f"fl.dp.target_quantile={dp.target_quantile} must be in [0, 1) and fl.dp.clip_lr={dp.clip_lr} "
                          "above 0")
    if dp.target_quantile and not dp.clip:
        raise ConfigError("adaptive clipping (fl.dp.target_quantile) starts from fl.dp.clip: set it (e.g. 0.1)")
    if not dp_enabled(fl):
        if dp.distributed:
            raise ConfigError("fl.dp.distributed adds the clients' share of the noise: set fl.dp.noise_multiplier or "
                              "fl.dp.target_epsilon (and fl.dp.clip)")
        return
    if dp.noise_multiplier and dp.target_epsilon:
        raise ConfigError("give fl.dp.noise_multiplier or fl.dp.target_epsilon, not both (the target chooses the noise)")
    if not dp.clip:
        raise ConfigError("differential privacy without clipping bounds nothing: set fl.dp.clip (the L2 norm each "
                          "client's update is clipped to)")
    if not dp_delta(fl) < 1:
        raise ConfigError(f"fl.dp.delta={dp.delta} must be below 1")
    if not plain_mean or defence != "none":
        raise ConfigError(f"fl.dp adds noise to the plain mean of clipped updates: use fl.strategy=fedavg with no "
                          f"fl.defence (not fl.strategy={fl.strategy}, fl.defence={defence})")
    if partial_uplink:
        raise ConfigError(f"fl.dp bounds what each client's update moves: an uplink that sends part of the values "
                          f"(comm.uplink.name={partial_uplink}) has the server fill the rest from the other clients' "
                          "values, so one client moves more than its clipped norm; use another uplink codec")
    if fl.mode == "async" or fl.overselect:
        raise ConfigError("fl.dp's accountant counts one uniformly sampled cohort a round: fl.mode=async and "
                          "fl.overselect aggregate whichever clients arrive first, which it does not cover")
    noise_split(fl)  # adaptive clipping: the count's noise must leave room for the updates' own
    if dp.target_epsilon:
        z = noise_multiplier(fl)
        if not math.isfinite(z) or z > MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"fl.dp.target_epsilon={dp.target_epsilon} over fl.rounds={fl.rounds} needs noise "
                              f"multiplier {z:.3g} (> {MAX_NOISE_MULTIPLIER:g}): nothing would be learned; raise the "
                              "target, sample fewer clients a round or run fewer rounds")


def noise_split(fl: FLConfig) -> tuple[float, float]:
    """(the updates' noise multiplier, the stddev of the noise on the count of unclipped updates): z and 0 with fixed
    clipping; with adaptive clipping Andrew et al.'s split, count stddev cohort / 20 and updates' multiplier
    (z^-2 - (2 x stddev)^-2)^(-1/2), so that the two releases together spend what z alone does (the same formula as
    Flower's ``compute_adaptive_noise_params``; fedq/ imports no Flower module)."""
    z = noise_multiplier(fl)
    if not fl.dp.target_quantile or not z:
        return z, 0.0
    cohort = clients_per_round(fl)
    count_stddev = cohort / 20
    if z >= 2 * count_stddev:
        raise ConfigError(f"adaptive clipping with {cohort} clients a round cannot spend noise multiplier {z:.3g}: the "
                          f"count's noise (stddev {cohort}/20) must be above z/2; sample more clients a round, "
                          "or use fixed clipping (fl.dp.target_quantile=0)")
    return (z ** -2 - (2 * count_stddev) ** -2) ** -0.5, count_stddev


@dataclass
class ClipNorm:
    """The norm the round's clients clip to: ``fl.dp.clip``, and with adaptive clipping where it has moved to."""

    norm: float
    target_quantile: float = 0.0
    lr: float = 0.2
    count_stddev: float = 0.0
    cohort: int = 1

    @classmethod
    def of(cls, fl: FLConfig) -> ClipNorm:
        return cls(fl.dp.clip, fl.dp.target_quantile, fl.dp.clip_lr, noise_split(fl)[1], clients_per_round(fl))

    def adapt(self, unclipped: list[bool], rng: np.random.Generator) -> None:
        """Andrew et al.'s geometric step from the round's (noised) fraction of updates within the norm."""
        if not self.target_quantile or not unclipped:
            return
        fraction = (sum(unclipped) + rng.normal(0.0, self.count_stddev)) / self.cohort
        self.norm *= math.exp(-self.lr * (fraction - self.target_quantile))
