"""Edge devices going wrong, simulated, all decided here: who is online, who drops out or crashes, who attacks, who
is late.

Every decision is a function of the run's seed, the round and the client's
partition id, so the server (``fedq.fl.rounds``) and each client
(``fedq.fl.client``) reach the same decisions without talking, and a rerun (or a
resumed run) sees the same faults. :class:`Faults` holds them for one run.

- **Availability** (``fl.devices``, ``fedq.fl.fleet``): a round samples only among
  the clients online in that round (one draw per client and round, vectorized
  over the fleet).
- **Dropouts** (``fl.dropout_rate``): a sampled client goes offline after it
  received the model and never replies.
- **Crashes** (``fl.crash_rate``): a sampled client fails with an error (as an
  out-of-memory would) and its reply is an error.
- **Lateness** (``fl.round_deadline``): an update whose round took longer on the
  virtual clock arrives too late to be used.
- **Attackers** (``fl.attackers``): which clients attack; how they attack is
  ``fl.attack``'s entry in ``fedq.fl.attacks``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from fedq.fl.attacks import ATTACKS, Attack
from fedq.fl.fleet import DeviceProfile, fleet
from fedq.fl.settings import FLConfig

DROPOUT_ERROR = "dropout: the client went offline before replying (fl.dropout_rate)"
CRASH_ERROR = "crashed: simulated out-of-memory in local training (fl.crash_rate)"
ONLINE_STREAM, DROPOUT_STREAM, CRASH_STREAM = 1, 2, 3


def _draw(seed: int, server_round: int, partition: int, stream: int) -> float:
    return float(np.random.default_rng([seed, server_round, partition, stream]).random())


def attackers(fraction: float, clients: int, seed: int) -> set[int]:
    """The partitions whose clients attack: round(fraction x clients) of them, chosen by the seed."""
    count = int(round(fraction * clients))
    return set(np.random.default_rng([seed, 0xBAD]).permutation(clients)[:count].tolist())


class Faults:
    """The faults of one run (``fl.*``, the seed): every decision of the module docstring, for any round and client."""

    def __init__(self, fl: FLConfig, seed: int) -> None:
        self.fl = fl
        self.seed = seed

    @cached_property
    def _fleet(self) -> tuple[list[DeviceProfile], np.ndarray] | None:
        return fleet(self.fl.devices, self.fl.clients, self.seed) if self.fl.devices is not None else None

    @property
    def has_clock(self) -> bool:
        return self.fl.devices is not None

    def device(self, partition: int) -> DeviceProfile | None:
        """The simulated device of a client (None without ``fl.devices``)."""
        if self._fleet is None:
            return None
        profiles, index = self._fleet
        return profiles[int(index[partition])]

    def devices(self) -> list[DeviceProfile]:
        """The profiles the fleet uses."""
        return self._fleet[0] if self._fleet is not None else []

    def online(self, server_round: int) -> np.ndarray | None:
        """The partitions online in ``server_round`` (sorted), or None when every client is (no fleet)."""
        if self._fleet is None:
            return None
        profiles, index = self._fleet
        availability = np.array([p.availability for p in profiles])[index]
        draws = np.random.default_rng([self.seed, server_round, ONLINE_STREAM]).random(self.fl.clients)
        return np.flatnonzero(draws < availability)

    def client_fault(self, server_round: int, partition: int) -> str | None:
        """Why a sampled client delivers nothing this round (a dropout or a crash), or None."""
        fl = self.fl
        if fl.dropout_rate > 0 and _draw(self.seed, server_round, partition, DROPOUT_STREAM) < fl.dropout_rate:
            return DROPOUT_ERROR
        if fl.crash_rate > 0 and _draw(self.seed, server_round, partition, CRASH_STREAM) < fl.crash_rate:
            return CRASH_ERROR
        return None

    @cached_property
    def attackers(self) -> set[int]:
        return attackers(self.fl.attackers, self.fl.clients, self.seed)

    @cached_property
    def attack(self) -> Attack:
        return ATTACKS.make(self.fl.attack)

    def tamper(self, partition: int, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What the client sends instead of ``update``: itself, unless it attacks alone (colluding attackers train
        honestly; the round's hook replaces what they send, ``Attack.collude``)."""
        if partition in self.attackers and not self.attack.collusive:
            return self.attack.alone(update, rng)
        return update

    def late(self, sim_seconds: float) -> str | None:
        """Why an update that took ``sim_seconds`` on the virtual clock is refused, or None."""
        deadline = self.fl.round_deadline
        if deadline and sim_seconds > deadline:
            return f"late: its round took {sim_seconds:.1f} simulated s, past fl.round_deadline={deadline:g}"
        return None

    def waited(self, sim_seconds: float | None) -> float:
        """How long the server waits on the virtual clock for a reply that came at ``sim_seconds`` (None: never)."""
        deadline = self.fl.round_deadline
        if sim_seconds is None:
            return deadline
        return min(sim_seconds, deadline) if deadline else sim_seconds
