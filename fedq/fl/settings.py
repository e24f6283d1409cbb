"""The ``fl.*`` settings (the federation, its rounds, its faults and defences) and their checks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

from fedq.errors import ConfigError
from fedq.fl.fleet import validate_fleet

log = logging.getLogger(__name__)

LOCAL_OPTIMIZERS = ("adam", "sgd")
SECAGG_SETTINGS = ("secagg_neighbours", "secagg_step", "secagg_masks")  # refused away from their default without fl.secagg
MODES = ("sync", "async")


def clients_sampled(fl: FLConfig) -> int:
    """The requests of a synchronous round (with over-selection, more than its target), or the clients an
    asynchronous federation keeps training at once: the most clients in flight at any time."""
    if fl.mode == "async":
        return concurrency(fl)
    return min(fl.clients, math.ceil(clients_per_round(fl) * (1 + fl.overselect)))


def client_threads(fl: FLConfig) -> int:
    """The torch threads of a simulated client on the CPU: ``fl.num_cpus`` (Ray runs several clients side by side)."""
    return max(1, int(fl.num_cpus))


def attackers_per_round(fl: FLConfig) -> int:
    """The most attackers a round can hold (``fl.attackers`` of its clients, rounded up)."""
    return math.ceil(fl.attackers * clients_per_round(fl)) if fl.attackers else 0


def buffer_size(fl: FLConfig) -> int:
    return fl.buffer_size or clients_per_round(fl)


def concurrency(fl: FLConfig) -> int:
    return fl.concurrency or 2 * buffer_size(fl)


@dataclass
class DPConfig:
    """User-level differential privacy, DP-FedAvg with central noise (``fedq.fl.privacy``)."""

    clip: float = 0.0  # C: each client clips its update to this L2 norm before encoding it (the server again after decoding)
    noise_multiplier: float = 0.0  # z: Gaussian noise of z x C on the sum of a round's clipped updates
    target_epsilon: float = 0.0  # > 0: the z that spends this epsilon in fl.rounds rounds (instead of noise_multiplier)
    delta: float = 0.0  # the delta epsilon is stated at; 0 = 1 / clients
    # > 0: adaptive clipping (Andrew et al. 2021): fl.dp.clip is where the norm starts, and it follows this quantile
    # of the clients' update norms, learnt from their noised count of unclipped updates
    target_quantile: float = 0.0
    clip_lr: float = 0.2  # adaptive clipping: the geometric step of the norm
    # Distributed DP under fl.secagg: each client adds its share of Skellam noise to its codes (Agarwal et al. 2021), so
    # that no party sees a noise-free update and the masked sum carries z x the codes' norm bound; the server adds none
    distributed: bool = False


@dataclass
class FLConfig:
    clients: int = 20
    clients_per_round: int = 0  # 0 = use fraction
    fraction: float = 0.25
    rounds: int = 20
    local_steps: int = 40
    local_epochs: int = 0  # >0 overrides local_steps
    local_lr: float = 2e-3
    # The clients' lr follows centralized training's warm-up and 1/sqrt decay over the
    # global step count: round r's local step i is step (r-1)*local_steps + i.
    warmup_steps: int = 200
    local_optimizer: str = "adam"  # adam | sgd
    # Personalisation, scored after the last round: each client that holds pairs out (partition.holdout) trains the
    # final global model (its adapters, with adapter.rank) this many more local steps on its own pairs, keeps it,
    # and is scored on its held-out pairs again. 0 = off.
    personal_steps: int = 0
    strategy: str = "fedavg"  # an entry of fedq.fl.strategies.STRATEGIES (Flower's strategies), or module:Class
    server_lr: float = 1.0  # global += server_lr * (aggregate - global); fedadam: Adam's eta; fedavgm: its server lr
    server_momentum: float = 0.0  # fedavgm (Hsu et al. 2019): heavy-ball momentum of the server's steps
    trim_beta: float = 0.2  # fedtrimmedavg: the fraction of updates cut at each end, per coordinate
    byzantine: int = 0  # krum, multikrum, bulyan: attackers per round the aggregator must tolerate
    min_replies: int = 1  # a round needs this many accepted updates, else the run stops with the reasons
    # Faults (fedq/fl/faults.py; fleets: fedq/fl/fleet.py): a fleet of device profiles gives every client a virtual clock.
    devices: Optional[str] = None  # a fleet (mixed), a device profile (midrange-4g, module:NAME) or a YAML file; None = no clock
    round_deadline: float = 0.0  # simulated seconds a round waits; a later client is dropped; 0 = no deadline
    dropout_rate: float = 0.0  # chance that a sampled client goes offline before replying
    crash_rate: float = 0.0  # chance that a sampled client fails with an error
    max_update_norm: float = 0.0  # reject an update whose L2 norm is larger; 0 = off
    max_update_norm_ratio: float = 0.0  # reject an update above this many times the round's median norm; 0 = off
    attack: str = "none"  # an entry of fedq.fl.attacks.ATTACKS, or module:Class of your own (fedq.registry)
    attackers: float = 0.0  # the fraction of the clients that attack
    attack_z: float = 0.0  # alie: standard deviations of the shift; 0 = Baruch et al.'s z for the round's size
    attack_eps: float = 0.5  # ipm: the attackers send -eps x the honest mean
    # Defences before the strategy aggregates: an entry of fedq.fl.defences.DEFENCES, or module:Class of your own
    defence: str = "none"
    bucket_size: int = 2  # bucketing: updates per bucket
    clip_tau: float = 0.0  # cclip: the clipping radius; 0 = the round's median distance to the center
    clip_iterations: int = 3  # cclip
    dnc_filter: float = 1.0  # dnc: each draw removes ceil(dnc_filter x fl.byzantine) updates
    dnc_iterations: int = 1  # dnc: draws of coordinates; an update is kept only if every draw keeps it
    dnc_dims: int = 10000  # dnc: coordinates per draw
    # fltrust: training pairs carved out for the server's root set (no client holds them); None: 100 (Cao et al.'s
    # size) with a defence that uses a root set, else none
    root_pairs: Optional[int] = None
    flame_noise: float = 0.0  # flame: Gaussian noise of flame_noise x the median update norm per value (FLAME's lambda)
    # Late work (a virtual clock, fl.devices): sample more and close the round at the clients_per_round-th arrival ...
    overselect: float = 0.0  # sample (1 + overselect) x clients_per_round; the slowest beyond the target are not waited for
    # ... or aggregate asynchronously (FedBuff, Nguyen et al. 2022): each round applies the next buffer_size arrivals,
    # each weighted by 1/sqrt(1 + staleness), staleness = rounds since the model the client trained from
    mode: str = "sync"  # sync | async
    buffer_size: int = 0  # async: arrivals per round; 0 = clients_per_round
    concurrency: int = 0  # async: clients training at once; 0 = 2 x buffer_size
    max_staleness: int = 10  # async: an update staler than this many rounds is discarded (counted)
    eval_every: int = 5
    checkpoint_every: int = 1  # rounds between saved run states (resume=RUN_DIR continues from the last)
    node_wait_seconds: float = 120.0  # how long the server waits for every node to connect
    # Flower's deployment runtime: wall seconds a round waits for a node's reply before it counts the node unreachable
    # (not sampled until it connects again); 0 = until Flower itself reports the node gone (two missed heartbeats, ~60 s)
    reply_timeout: float = 0.0
    dp: DPConfig = field(default_factory=DPConfig)
    # Secure aggregation (fedq.fl.secagg): the server learns only the sum of a round's updates, coded on a grid the
    # round shares (comm.uplink.bits levels up to secagg_step x the clients' median block max |x|, or with fl.dp one step
    # of secagg_step x fl.dp.clip / sqrt(values)), masked pairwise among secagg_neighbours neighbours per client
    secagg: bool = False
    secagg_neighbours: int = 16
    secagg_step: float = 1.0
    secagg_masks: bool = True  # false: the same grid's codes sent in the clear (the baseline secure aggregation costs)
    num_cpus: int = 1  # CPUs per simulated client (whole CPUs: Flower's simulation config takes integers)
    num_gpus: float = 0.0  # GPUs per simulated client; fractions share a GPU
    verbose: bool = False  # show Flower's own INFO/DEBUG log


def clients_per_round(fl: FLConfig) -> int:
    return fl.clients_per_round if fl.clients_per_round > 0 else max(1, round(fl.fraction * fl.clients))


def _at_least(value: float, low: float, name: str) -> None:
    if value < low:
        raise ConfigError(f"fl.{name}={value} must be >= {low:g}")


def _above(value: float, low: float, name: str) -> None:
    if value <= low:
        raise ConfigError(f"fl.{name}={value} must be > {low:g}")


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"fl.{name}={value!r} is unknown; choose one of {', '.join(choices)}")


def validate_fl_config(fl: FLConfig) -> None:
    """Every ``fl.*`` value and combination (one ConfigError line)."""
    if fl.clients < 1:
        raise ConfigError(f"clients={fl.clients} must be >= 1")
    if not 0 < fl.fraction <= 1:
        raise ConfigError(f"fl.fraction={fl.fraction} must be in (0, 1]")
    _at_least(fl.clients_per_round, 0, "clients_per_round")
    k = clients_per_round(fl)
    if k > fl.clients:
        raise ConfigError(f"fl.clients_per_round={k} is more than clients={fl.clients}")
    for name, low in (("rounds", 1), ("local_steps", 1), ("local_epochs", 0), ("warmup_steps", 0), ("eval_every", 0),
                      ("personal_steps", 0), ("checkpoint_every", 1), ("num_cpus", 1), ("num_gpus", 0), ("byzantine", 0),
                      ("round_deadline", 0), ("max_update_norm", 0), ("reply_timeout", 0)):
        _at_least(getattr(fl, name), low, name)
    for name in ("local_lr", "server_lr", "node_wait_seconds"):
        _above(getattr(fl, name), 0, name)
    if not 0.0 <= fl.server_momentum < 1.0:
        raise ConfigError(f"fl.server_momentum={fl.server_momentum} must be in [0, 1)")
    _choice(fl.local_optimizer, LOCAL_OPTIMIZERS, "local_optimizer")
    _validate_faults(fl, k)
    _validate_late_work(fl, k)


def _validate_faults(fl: FLConfig, k: int) -> None:
    if not 1 <= fl.min_replies <= k:
        raise ConfigError(f"fl.min_replies={fl.min_replies} must be between 1 and the {k} clients per round")
    for name in ("dropout_rate", "crash_rate", "attackers"):
        if not 0.0 <= getattr(fl, name) < 1.0:
            raise ConfigError(f"fl.{name}={getattr(fl, name)} must be in [0, 1)")
    if fl.max_update_norm_ratio and fl.max_update_norm_ratio < 1:
        raise ConfigError(f"fl.max_update_norm_ratio={fl.max_update_norm_ratio} must be >= 1 (or 0 = off): below 1 it rejects "
                          "the median update itself")
    if fl.devices is not None:
        validate_fleet(fl.devices)
    elif fl.round_deadline > 0:
        raise ConfigError("fl.round_deadline needs a virtual clock: set fl.devices (e.g. fl.devices=midrange-4g)")
    if (fl.attack == "none") != (fl.attackers == 0):
        raise ConfigError(f"fl.attack={fl.attack} with fl.attackers={fl.attackers}: set both (an attack and the fraction of "
                          "attackers) or neither")
    _at_least(fl.bucket_size, 1, "bucket_size")
    _at_least(fl.clip_tau, 0, "clip_tau")
    _at_least(fl.clip_iterations, 1, "clip_iterations")
    _at_least(fl.attack_z, 0, "attack_z")
    if fl.root_pairs is not None:
        _at_least(fl.root_pairs, 0, "root_pairs")
    _at_least(fl.flame_noise, 0, "flame_noise")
    _above(fl.attack_eps, 0, "attack_eps")
    _at_least(fl.secagg_neighbours, 1, "secagg_neighbours")
    _above(fl.secagg_step, 0, "secagg_step")
    if not fl.secagg and any(getattr(fl, name) != getattr(FLConfig, name) for name in SECAGG_SETTINGS):
        raise ConfigError("fl.secagg_neighbours, fl.secagg_step and fl.secagg_masks are settings of secure aggregation: "
                          "set fl.secagg=true")


def _validate_late_work(fl: FLConfig, k: int) -> None:
    _choice(fl.mode, MODES, "mode")
    _at_least(fl.overselect, 0, "overselect")
    if fl.overselect and fl.devices is None:
        raise ConfigError("fl.overselect closes a round at the target's arrival on the virtual clock: set fl.devices")
    if fl.mode != "async":
        for name in ("buffer_size", "concurrency"):
            if getattr(fl, name):
                raise ConfigError(f"fl.{name} applies to fl.mode=async")
        return
    if fl.devices is None:
        raise ConfigError("fl.mode=async orders the arrivals on the virtual clock: set fl.devices")
    if fl.overselect or fl.round_deadline:
        raise ConfigError("fl.mode=async uses every update that arrives (weighted by staleness): "
                          "fl.overselect and fl.round_deadline are for fl.mode=sync")
    _at_least(fl.buffer_size, 0, "buffer_size")
    if buffer_size(fl) > fl.clients:
        raise ConfigError(f"fl.buffer_size={buffer_size(fl)} is more than clients={fl.clients}")
    if concurrency(fl) < buffer_size(fl):
        raise ConfigError(f"fl.concurrency={concurrency(fl)} is below fl.buffer_size={buffer_size(fl)}: a round could never fill")
    if fl.max_staleness < 1:
        raise ConfigError(f"fl.max_staleness={fl.max_staleness} must be >= 1 in fl.mode=async (0 would discard every late "
                          "update)")
    if concurrency(fl) > fl.clients:
        raise ConfigError(f"fl.concurrency={concurrency(fl)} is more than clients={fl.clients}")
    if concurrency(fl) > (fl.max_staleness + 1) * buffer_size(fl):
        log.warning(f"with fl.concurrency={concurrency(fl)} and fl.buffer_size={buffer_size(fl)}, updates wait about "
                    f"{concurrency(fl) // buffer_size(fl)} rounds, past fl.max_staleness={fl.max_staleness}: most would be "
                    "discarded")
