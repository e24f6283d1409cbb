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
(``fl.attack_eps``). A researcher's own: a subclass of :class:`Attack` in their
module, named as ``fl.attack=module:Class`` (``fedq.registry``).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from fedq.errors import ConfigError
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
