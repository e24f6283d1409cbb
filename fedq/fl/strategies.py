"""Server strategies (``fl.strategy``): Flower's, one registry entry each, stating what the rest of fedq needs to know.

fedq imports no Flower module; an entry names its Flower strategy (``flower``: a
class of ``flwr.serverapp.strategy``, or ``module:Class`` of a Flower strategy of
your own), the keyword arguments it takes from ``fl.*`` (``options``), the
checks a run must pass (``check``), and what it does with a round's updates:

- ``coordinate_wise``: it aggregates each value on its own (a median, a trimmed
  mean), so it cannot read updates that carry part of the values
  (``comm.uplink`` codecs that ``reads_reference``);
- ``fewest_updates``: the updates it needs in a round (Krum's 2f + 3, Bulyan's
  4f + 3), which a round, or a defence that merges updates, must leave it;
- ``plain_mean``: its aggregate is the weighted mean of what it is given, with no
  step of its own (a defence that is itself the robust mean needs that);
- ``optimizer_state``: the attributes of the Flower strategy that hold its own
  state (FedAdam's moments), saved with the run and restored on resume.

``server/aggregation.py`` builds the Flower strategy from the entry. A
researcher's own: a subclass of :class:`Strategy` in their module
(``fl.strategy=module:Class``), naming the Flower strategy it runs.
"""

from __future__ import annotations

import math
from typing import ClassVar

from fedq.errors import ConfigError
from fedq.fl.settings import FLConfig, clients_per_round
from fedq.registry import ClassRegistry


class Strategy:
    name: ClassVar[str]
    flower: ClassVar[str]
    coordinate_wise: ClassVar[bool] = False
    plain_mean: ClassVar[bool] = False
    optimizer_state: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()  # the fl.* fields of its own it reads (fl.trim_beta): see fedq.fl.entries
    chooses: ClassVar[bool] = False  # it keeps some updates whole and drops the others (the Krum family)

    @property
    def steps_itself(self) -> bool:
        """It makes the server's step (with its own optimizer): fedq then does not scale it by fl.server_lr."""
        return bool(self.optimizer_state)

    def options(self, fl: FLConfig) -> dict[str, object]:
        """The keyword arguments its Flower strategy takes from ``fl.*`` (besides the weighting key)."""
        return {}

    def fewest_updates(self, fl: FLConfig) -> int:
        return 1

    def fewest(self, fl: FLConfig) -> str:
        """``fewest_updates`` as a formula, for messages."""
        return str(self.fewest_updates(fl))

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        """Refuse (ConfigError) settings it cannot run with; ``attackers``: the most a round can hold."""
        if round_size < self.fewest_updates(fl):
            raise ConfigError(f"fl.strategy={fl.strategy} with fl.byzantine={fl.byzantine} needs at least "
                              f"{self.fewest(fl)} = {self.fewest_updates(fl)} clients per round (has {round_size})")


STRATEGIES: ClassRegistry[Strategy] = ClassRegistry("strategies", "fl.strategy", Strategy)


@STRATEGIES.add
class FedAvgStrategy(Strategy):
    name = "fedavg"
    flower = "FedAvg"
    plain_mean = True


@STRATEGIES.add
class FedAvgMStrategy(Strategy):
    name = "fedavgm"
    flower = "FedAvgM"
    optimizer_state = ("momentum_vector",)
    settings = ("server_momentum",)

    def options(self, fl: FLConfig) -> dict[str, object]:
        return {"server_learning_rate": fl.server_lr, "server_momentum": fl.server_momentum}


@STRATEGIES.add
class FedAdamStrategy(Strategy):
    name = "fedadam"
    flower = "FedAdam"
    optimizer_state = ("m_t", "v_t")

    def options(self, fl: FLConfig) -> dict[str, object]:
        return {"eta": fl.server_lr, "eta_l": fl.local_lr, "beta_1": 0.9, "beta_2": 0.99}  # Adam's eta: fl.server_lr


@STRATEGIES.add
class FedMedianStrategy(Strategy):
    name = "fedmedian"
    flower = "FedMedian"
    coordinate_wise = True

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        super().check(fl, round_size, attackers)
        if attackers * 2 >= round_size:
            raise ConfigError(f"fl.attackers={fl.attackers} puts up to {attackers} attackers in a round of {round_size}; "
                              "a median tolerates fewer than half")


@STRATEGIES.add
class FedTrimmedAvgStrategy(Strategy):
    name = "fedtrimmedavg"
    flower = "FedTrimmedAvg"
    coordinate_wise = True
    settings = ("trim_beta",)

    def options(self, fl: FLConfig) -> dict[str, object]:
        return {"beta": fl.trim_beta}

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        super().check(fl, round_size, attackers)
        if not 0 <= fl.trim_beta < 0.5:
            raise ConfigError(f"fl.trim_beta={fl.trim_beta} must be in [0, 0.5)")
        if attackers > math.floor(fl.trim_beta * round_size):
            raise ConfigError(f"fl.attackers={fl.attackers} puts up to {attackers} attackers in a round of {round_size}; "
                              f"fl.trim_beta={fl.trim_beta} trims only {math.floor(fl.trim_beta * round_size)} at each "
                              "end: raise fl.trim_beta")


class Selecting(Strategy):
    """The Krum family: it keeps the updates closest to the others and drops the rest; it tolerates fl.byzantine."""

    settings = ("byzantine",)
    chooses = True

    def options(self, fl: FLConfig) -> dict[str, object]:
        return {"num_malicious_nodes": fl.byzantine}

    def fewest_updates(self, fl: FLConfig) -> int:
        return 2 * fl.byzantine + 3

    def fewest(self, fl: FLConfig) -> str:
        return "2f+3"

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        super().check(fl, round_size, attackers)
        if fl.byzantine < attackers:
            raise ConfigError(f"fl.attackers={fl.attackers} puts up to {attackers} attackers in a round of {round_size}; "
                              f"fl.strategy={fl.strategy} tolerates fl.byzantine={fl.byzantine}: raise fl.byzantine")


@STRATEGIES.add
class KrumStrategy(Selecting):
    name = "krum"
    flower = "Krum"


@STRATEGIES.add
class MultiKrumStrategy(Selecting):
    name = "multikrum"
    flower = "MultiKrum"

    def options(self, fl: FLConfig) -> dict[str, object]:
        return {**super().options(fl), "num_nodes_to_select": max(1, clients_per_round(fl) - fl.byzantine)}


@STRATEGIES.add
class BulyanStrategy(Selecting):
    name = "bulyan"
    flower = "Bulyan"
    coordinate_wise = True  # a trimmed mean of what Krum selected

    def fewest_updates(self, fl: FLConfig) -> int:
        return 4 * fl.byzantine + 3

    def fewest(self, fl: FLConfig) -> str:
        return "4f+3"
