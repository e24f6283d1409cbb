"""Edge devices going wrong, simulated, all decided here: who is online, who drops out or crashes,
who attacks and how, how long a round takes on each device and who is late.

Every decision is a function of the run's seed, the round and the client's
partition id, so the server (``fedq.fl.rounds``) and each client
(``fedq.fl.client``) reach the same decisions without talking, and a rerun (or a
resumed run) sees the same faults. :class:`Faults` holds them for one run.

- **Device profiles** (``fl.devices``): each client gets a sustained training
  speed in GFLOP/s, an uplink and a downlink bandwidth and an availability (the
  chance it is online when a round samples). The virtual clock of a client's round
  is ``download bytes / downlink + training FLOPs / speed + upload bytes / uplink``,
  with the training FLOPs of its local steps counted as 6 x parameters x tokens
  (forward and backward). The clock does not depend on the machine that runs
  the simulation, or on what else it runs: the same command gives the same times.
- **Availability**: a round samples only among the clients online in that round
  (one draw per client and round, vectorized over the fleet).
- **Dropouts** (``fl.dropout_rate``): a sampled client goes offline after it
  received the model and never replies.
- **Crashes** (``fl.crash_rate``): a sampled client fails with an error (as an
  out-of-memory would) and its reply is an error.
- **Lateness** (``fl.round_deadline``): an update whose round took longer on the
  virtual clock arrives too late to be used.
- **Attacks** (``fl.attack`` on a fraction ``fl.attackers`` of the clients). Each
  attacker alone: ``sign_flip`` sends its negated update, ``scaled_noise``
  Gaussian noise ten times its norm, ``std_shift`` its update shifted against its
  own direction by its own standard deviation. Colluding, omniscient attackers,
  who see the honest updates of the round (in the simulation a hook on the
  server's side gives them that view: nothing a real client could do without
  colluding with the others): ``alie`` ("a little is enough", Baruch et al.,
  2019) all send the coordinate-wise mean of the honest updates minus z times
  their coordinate-wise standard deviation (``fl.attack_z``; 0: the paper's z for
  n clients of which m attack, Phi^-1((n - s) / n) with s = floor(n/2 + 1) - m);
  ``ipm`` (inner-product manipulation, Xie et al., 2020) all send -eps times the
  honest mean (``fl.attack_eps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import yaml

from fedq.errors import ConfigError

if TYPE_CHECKING:
    from fedq.fl.settings import FLConfig

ATTACKS = ("none", "sign_flip", "scaled_noise", "std_shift", "alie", "ipm")
COLLUSIVE = ("alie", "ipm")  # attacks that need the round's honest updates
DROPOUT_ERROR = "dropout: the client went offline before replying (fl.dropout_rate)"
CRASH_ERROR = "crashed: simulated out-of-memory in local training (fl.crash_rate)"
ONLINE_STREAM, DROPOUT_STREAM, CRASH_STREAM = 1, 2, 3


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    train_gflops: float  # sustained training speed, GFLOP/s
    up_mbps: float
    down_mbps: float
    availability: float  # chance of being online when a round samples

    def round_seconds(self, download_bytes: float, train_flops: float, upload_bytes: float) -> float:
        """The virtual clock of one client's round on this device."""
        return (
            8 * download_bytes / (self.down_mbps * 1e6)
            + train_flops / (self.train_gflops * 1e9)
            + 8 * upload_bytes / (self.up_mbps * 1e6)
        )


def training_flops(parameters: int, tokens: int, frozen: int = 0) -> float:
    """Forward + backward of ``tokens`` (source and target) through a model of ``parameters``: 6 N T, less
    the weight gradients of the ``frozen`` ones (2 per token each: a frozen base under adapters)."""
    return (6.0 * parameters - 2.0 * frozen) * tokens


# Orders of magnitude, not measurements. Bandwidths: the medians speed-test indices report
# for fixed broadband and mobile networks (Ookla Speedtest Global Index, 2024: about
# 90/40 Mbit/s fixed, 50/10 mobile) and 2/1 Mbit/s for a board on a constrained link.
# Training speeds: sustained fp32 training on a phone's or board's CPU reaches a few to a
# few tens of GFLOP/s (this project's 2-core VM sustains about 60 GFLOP/s on the tiny
# model). Availabilities: FedScale's device traces (Lai et al., ICML 2022), where phones
# are online for training a fraction of the day.
PROFILES = {
    "flagship-wifi": DeviceProfile("flagship-wifi", train_gflops=20.0, up_mbps=40.0, down_mbps=90.0, availability=0.9),
    "midrange-4g": DeviceProfile("midrange-4g", train_gflops=5.0, up_mbps=10.0, down_mbps=50.0, availability=0.7),
    "board-slow-link": DeviceProfile("board-slow-link", train_gflops=1.5, up_mbps=1.0, down_mbps=2.0, availability=0.8),
}
# Built-in fleets: a name -> {profile: share of the clients}.
FLEETS = {
    "flagship-wifi": {"flagship-wifi": 1.0},
    "midrange-4g": {"midrange-4g": 1.0},
    "board-slow-link": {"board-slow-link": 1.0},
    "mixed": {"flagship-wifi": 0.3, "midrange-4g": 0.5, "board-slow-link": 0.2},
}


def load_fleet(spec: str) -> tuple[dict[str, DeviceProfile], dict[str, float]]:
    """A built-in fleet name, or a YAML file
    ``{profiles: {name: {train_gflops, up_mbps, down_mbps, availability}}, mix: {name: share}}``."""
    if spec in FLEETS:
        return PROFILES, FLEETS[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"fl.devices={spec!r} is neither a built-in fleet ({', '.join(FLEETS)}) nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        profiles = dict(PROFILES)
        for name, fields in (raw.get("profiles") or {}).items():
            profiles[name] = DeviceProfile(name=name, **fields)
        mix = {str(name): float(share) for name, share in raw["mix"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ConfigError(f"fl.devices={spec}: not a fleet file ({type(err).__name__}: {err})") from None
    return profiles, mix


def validate_fleet(spec: str) -> dict[str, DeviceProfile]:
    """Check a fleet spec; return the profiles it uses."""
    profiles, mix = load_fleet(spec)
    unknown = [name for name in mix if name not in profiles]
    if unknown:
        raise ConfigError(f"fl.devices={spec}: unknown device profile {unknown[0]!r}; known: {', '.join(profiles)}")
    if not mix or any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(f"fl.devices={spec}: the shares of the mix must be >= 0 and add up to more than 0")
    for name in mix:
        p = profiles[name]
        if p.train_gflops <= 0 or p.up_mbps <= 0 or p.down_mbps <= 0 or not 0 < p.availability <= 1:
            raise ConfigError(f"fl.devices={spec}: profile {name} needs train_gflops, up_mbps, down_mbps > 0 and availability "
                              "in (0, 1]")
    return {name: profiles[name] for name in mix}


def fleet(spec: str, clients: int, seed: int) -> tuple[list[DeviceProfile], np.ndarray]:
    """The fleet's profiles and, per partition, the index of its profile: the mix's shares assigned to the
    partitions by a seeded permutation (one byte per client, so a large fleet costs little)."""
    profiles, mix = load_fleet(spec)
    names = list(mix)
    shares = np.array([mix[name] for name in names], np.float64)
    counts = np.floor(shares / shares.sum() * clients).astype(int)
    for i in np.argsort(-(shares / shares.sum() * clients - counts))[: clients - counts.sum()]:
        counts[i] += 1  # largest remainders first
    assigned = np.repeat(np.arange(len(names), dtype=np.int16), counts)
    order = np.random.default_rng([seed, 0xDE1CE]).permutation(clients)
    return [profiles[name] for name in names], assigned[order]


def _draw(seed: int, server_round: int, partition: int, stream: int) -> float:
    return float(np.random.default_rng([seed, server_round, partition, stream]).random())


def attackers(fraction: float, clients: int, seed: int) -> set[int]:
    """The partitions whose clients attack: round(fraction x clients) of them, chosen by the seed."""
    count = int(round(fraction * clients))
    return set(np.random.default_rng([seed, 0xBAD]).permutation(clients)[:count].tolist())


def attack(kind: str, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What an attacking client sends instead of its honest ``update``."""
    if kind == "sign_flip":
        return -update
    if kind == "scaled_noise":
        noise = rng.standard_normal(update.size).astype(np.float32)
        return noise * (10.0 * np.linalg.norm(update) / max(np.linalg.norm(noise), 1e-12))
    if kind == "std_shift":
        return update - np.float32(update.std()) * np.sign(update)
    raise ConfigError(f"fl.attack={kind!r} is not an attack of one client alone; choose one of sign_flip, scaled_noise, "
                      "std_shift")


def alie_z(clients: int, attackers: int) -> float:
    """Baruch et al.'s z for ``clients`` in a round of which ``attackers`` attack: the largest shift (in standard
    deviations) that still leaves the attackers' value closer to the mean than s honest clients are."""
    supporters = math.floor(clients / 2 + 1) - attackers
    return NormalDist().inv_cdf(min(max((clients - supporters) / clients, 1e-6), 1 - 1e-6))


def colluding_update(kind: str, honest: list[np.ndarray], attackers: int, z: float = 0.0, eps: float = 0.5) -> np.ndarray:
    """What every colluding attacker of a round sends, from the round's honest updates."""
    stacked = np.stack(honest).astype(np.float64)
    mean = stacked.mean(axis=0)
    if kind == "alie":
        z = z or alie_z(len(honest) + attackers, attackers)
        return (mean - z * stacked.std(axis=0)).astype(np.float32)
    if kind == "ipm":
        return (-eps * mean).astype(np.float32)
    raise ConfigError(f"fl.attack={kind!r} is not a colluding attack; choose one of {', '.join(COLLUSIVE)}")


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

    @property
    def collusive(self) -> bool:
        return self.fl.attack in COLLUSIVE

    def tamper(self, partition: int, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What the client sends instead of ``update``: itself, unless it attacks alone (colluding attackers train
        honestly; the round's hook replaces what they send, ``colluding_update``)."""
        if partition in self.attackers and self.fl.attack not in COLLUSIVE:
            return attack(self.fl.attack, update, rng)
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
