"""Simulated devices: each client's profile (training speed, bandwidths, availability) and the virtual clock of its
round.

``fl.devices`` names a fleet: a mix of device profiles (``mixed``), one
profile (every client alike: ``midrange-4g``, or a researcher's own
``module:NAME``, a ``DeviceProfile``, or an entry point in ``fedq.devices``),
or a YAML file of profiles and their shares. The virtual clock of a client's round is ``download bytes / downlink +
training FLOPs / speed + upload bytes / uplink``, with the training FLOPs of its
local steps counted as 6 x parameters x tokens (forward and backward). The clock
does not depend on the machine that runs the simulation, or on what else it
runs: the same command gives the same times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fedq.errors import ConfigError
from fedq.registry import Registry


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
PROFILES: Registry[DeviceProfile] = Registry("devices", "fl.devices", DeviceProfile)
PROFILES.add(DeviceProfile("flagship-wifi", train_gflops=20.0, up_mbps=40.0, down_mbps=90.0, availability=0.9))
PROFILES.add(DeviceProfile("midrange-4g", train_gflops=5.0, up_mbps=10.0, down_mbps=50.0, availability=0.7))
PROFILES.add(DeviceProfile("board-slow-link", train_gflops=1.5, up_mbps=1.0, down_mbps=2.0, availability=0.8))
# Built-in mixes: a name -> {profile: share of the clients}; a profile's own name is a fleet of it alone.
FLEETS = {"mixed": {"flagship-wifi": 0.3, "midrange-4g": 0.5, "board-slow-link": 0.2}}


def load_fleet(spec: str) -> tuple[dict[str, DeviceProfile], dict[str, float]]:
    """The profiles and shares ``fl.devices=spec`` means: a built-in mix, one profile (a fleet of it alone), or a
    YAML file ``{profiles: {name: {train_gflops, up_mbps, down_mbps, availability}}, mix: {name: share}}`` whose
    mix may also name any profile of the registry."""
    if spec in FLEETS:
        return {name: PROFILES.get(name) for name in FLEETS[spec]}, FLEETS[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        try:
            profile = PROFILES.get(spec)
        except ConfigError:
            if ":" in spec:
                raise  # the user's own module: its error names what is wrong
            raise ConfigError(f"fl.devices={spec!r} is unknown; choose a fleet ({', '.join(FLEETS)}), a device profile "
                              f"({', '.join(PROFILES.names())}), module:NAME of your own (a DeviceProfile) or a YAML "
                              "file") from None
        return {spec: profile}, {spec: 1.0}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        own = {name: DeviceProfile(name=name, **fields) for name, fields in (raw.get("profiles") or {}).items()}
        mix = {str(name): float(share) for name, share in raw["mix"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ConfigError(f"fl.devices={spec}: not a fleet file ({type(err).__name__}: {err})") from None
    try:
        return {name: own[name] if name in own else PROFILES.get(name) for name in mix}, mix
    except ConfigError as err:
        raise ConfigError(f"fl.devices={spec}: its mix names a profile it does not define ({err})") from None


def validate_fleet(spec: str) -> dict[str, DeviceProfile]:
    """Check a fleet spec; return the profiles it uses."""
    profiles, mix = load_fleet(spec)
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
