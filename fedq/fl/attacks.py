"""Attacks (``fl.attack`` on a fraction ``fl.attackers`` of the clients), one registry entry each.

An attack of one client alone changes what that client sends (``alone``, run
by the client); a colluding, omniscient one (``collusive``) sees the round's
honest updates and makes what every attacker of the round sends (``collude``,
run by the simulation's hook on the server's side: nothing a real client could
do without colluding with the others). Either way the attackers' update is
encoded with the run's uplink codec, so they send only what the codec carries.

Built in: ``sign_flip`` sends the negated update, ``scaled_noise`` Gaussian noise
ten times its norm, ``std_shift`` the update shifted against its own direction by
its own standard deviation; colluding, ``alie`` ("a little is enough", Baruch et
al., 2019) sends the coordinate-wise mean of the honest updates minus z times
their coordinate-wise standard deviation (``fl.attack_z``; 0: the paper's z for n
clients of which m attack, Phi^-1((n - s) / n) with s = floor(n/2 + 1) - m), and
``ipm`` (inner-product manipulation, Xie et al., 2020) -eps times the honest mean
(``fl.attack_eps``); ``min_max`` and ``min_sum`` (Shejwalkar & Houmansadr, NDSS
2021) send the honest mean moved against the honest standard deviation by the
largest multiple that keeps the attackers' update as close to the honest ones as
they are to each other: its largest distance to an honest update no larger than
the largest between two honest ones (min-max), or its sum of squared distances
to them no larger than the largest such sum of an honest one (min-sum). A
researcher's own: a subclass of :class:`Attack` in their module, named as
``fl.attack=module:Class`` (``fedq.registry``).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from fedq.errors import ConfigError
from fedq.fl.defences import pairwise_squared_distances
from fedq.fl.settings import FLConfig
from fedq.registry import ClassRegistry


class Attack:
    """What attacking clients send. ``check`` refuses a run the attack cannot make sense in, before any work."""

    name: ClassVar[str]
    collusive: ClassVar[bool] = False  # needs the round's honest updates
    settings: ClassVar[tuple[str, ...]] = ()  # the fl.* fields of its own it reads (fl.attack_z): see fedq.fl.entries

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        """``attackers``: the most attackers a round of ``round_size`` can hold."""
        if self.collusive and attackers * 2 >= round_size:
            raise ConfigError(f"fl.attack={fl.attack} needs honest clients in every round: fl.attackers={fl.attackers} puts "
                              f"up to {attackers} of {round_size}")

    def alone(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What one attacking client sends instead of its honest ``update``."""
        return update

    def collude(self, honest: list[np.ndarray], attackers: int, fl: FLConfig) -> np.ndarray:
        """What every colluding attacker of a round sends, from the round's honest updates."""
        raise NotImplementedError


ATTACKS: ClassRegistry[Attack] = ClassRegistry("attacks", "fl.attack", Attack)


@ATTACKS.add
class NoAttack(Attack):
    name = "none"


@ATTACKS.add
class SignFlip(Attack):
    name = "sign_flip"

    def alone(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return -update


@ATTACKS.add
class ScaledNoise(Attack):
    name = "scaled_noise"

    def alone(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(update.size).astype(np.float32)
        return noise * (10.0 * float(np.linalg.norm(update)) / max(float(np.linalg.norm(noise)), 1e-12))


@ATTACKS.add
class StdShift(Attack):
    name = "std_shift"

    def alone(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return update - np.float32(update.std()) * np.sign(update)


def alie_z(clients: int, attackers: int) -> float:
    """Baruch et al.'s z for ``clients`` in a round of which ``attackers`` attack: the largest shift (in standard
    deviations) that still leaves the attackers' value closer to the mean than s honest clients are."""
    supporters = math.floor(clients / 2 + 1) - attackers
    return NormalDist().inv_cdf(min(max((clients - supporters) / clients, 1e-6), 1 - 1e-6))


@ATTACKS.add
class ALittleIsEnough(Attack):
    name = "alie"
    collusive = True
    settings = ("attack_z",)

    def collude(self, honest: list[np.ndarray], attackers: int, fl: FLConfig) -> np.ndarray:
        stacked = np.stack(honest).astype(np.float64)
        z = fl.attack_z or alie_z(len(honest) + attackers, attackers)
        return (stacked.mean(axis=0) - z * stacked.std(axis=0)).astype(np.float32)


@ATTACKS.add
class InnerProductManipulation(Attack):
    name = "ipm"
    collusive = True
    settings = ("attack_eps",)

    def collude(self, honest: list[np.ndarray], attackers: int, fl: FLConfig) -> np.ndarray:
        return (-fl.attack_eps * np.stack(honest).astype(np.float64).mean(axis=0)).astype(np.float32)


class _AgainstDistances(Attack):
    """The honest mean moved by gamma x (-their coordinate-wise standard deviation), gamma the largest for which
    ``fits`` still holds (found by doubling, then bisection), as in Shejwalkar & Houmansadr's Algorithm 1."""

    collusive = True

    @staticmethod
    def fits(distances: np.ndarray, honest_distances: np.ndarray) -> bool:
        """Whether the attackers' squared distances to the honest updates stay inside what the honest ones span."""
        raise NotImplementedError

    def collude(self, honest: list[np.ndarray], attackers: int, fl: FLConfig) -> np.ndarray:
        stacked = np.stack(honest).astype(np.float64)
        mean, direction = stacked.mean(axis=0), -stacked.std(axis=0)
        honest_distances = np.maximum(pairwise_squared_distances(stacked), 0.0)

        def fits(gamma: float) -> bool:
            return self.fits(np.square(stacked - (mean + gamma * direction)).sum(axis=1), honest_distances)

        low, high = 0.0, 1.0
        while fits(high) and high < 1e6:
            low, high = high, 2.0 * high
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return (mean + low * direction).astype(np.float32)


@ATTACKS.add
class MinMax(_AgainstDistances):
    name = "min_max"

    @staticmethod
    def fits(distances: np.ndarray, honest_distances: np.ndarray) -> bool:
        return bool(distances.max() <= honest_distances.max())


@ATTACKS.add
class MinSum(_AgainstDistances):
    name = "min_sum"

    @staticmethod
    def fits(distances: np.ndarray, honest_distances: np.ndarray) -> bool:
        return bool(distances.sum() <= honest_distances.sum(axis=1).max())
