"""Defences against attackers, applied to the decoded updates before Flower's strategy: one registry entry each.

Flower ships FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan; a small
coordinated shift ("a little is enough", Baruch et al. 2019) passes all of them.
The defences of the literature that hold are missing there and live here, each a
transform of the round's admitted updates (and their weights) that runs before
the strategy aggregates (``fl.defence``):

- ``nnm``: nearest-neighbour mixing (Allouah et al., 2023): every update is
  replaced by the mean of its n - f nearest updates (itself included), which
  pulls attackers towards the honest majority before a robust rule;
- ``bucketing`` (Karimireddy et al., 2022): the updates are shuffled into buckets
  of ``fl.bucket_size`` and each bucket is averaged, so that a robust rule sees
  fewer, less heterogeneous inputs;
- ``cclip``: centered clipping (Karimireddy et al., 2021): starting from the
  previous round's aggregate update, ``fl.clip_iterations`` times move by the
  mean of every update's difference clipped to ``fl.clip_tau`` (0: the round's
  median difference); the result is one update (``fl.strategy=fedavg``).
- ``dnc``: Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): on random
  coordinates, the updates farthest along the top singular direction of the
  centred updates are removed (``fl.dnc_filter`` x ``fl.byzantine`` of them);
- ``fltrust`` (Cao et al., NDSS 2021): the server trains on a root set of its
  own (``fl.root_pairs``, ``fedq.fl.root``) and weighs each update by the
  ReLU of its cosine to the server's update, rescaled to that update's norm;
- ``trustfilter``: FLTrust's trust as a filter, without its reweighting and
  rescaling: the updates whose cosine to the server's root update is positive go
  to the strategy as they were sent (``fl.strategy=fedmedian``: their median);
- ``flame`` (Nguyen et al., USENIX Security 2022): HDBSCAN (scikit-learn) on
  the updates' cosine distances keeps the majority cluster, every update is
  clipped to the round's median norm, and Gaussian noise of ``fl.flame_noise``
  x that norm per value may be added to their mean; without noise the strategy
  aggregates the admitted, clipped updates (``fl.strategy=fedmedian``: their median).

All of them work on decoded updates, whatever the uplink codec, and on the
buffer of an asynchronous round as on a synchronous round's replies. A
researcher's own: a subclass of :class:`Defence` in their module, named as
``fl.defence=module:Class`` (``fedq.registry``; docs/DESIGN.md has an example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.errors import ConfigError
from fedq.fl.settings import FLConfig
from fedq.fl.strategies import STRATEGIES
from fedq.registry import ClassRegistry


@dataclass
class RoundView:
    """What a defence may know of its round besides the updates: the settings, the round's randomness, the
    server's last step (the global model's change in the round before) and, for a defence that ``uses_root``, the
    server's own update on its root set; and where a defence that makes one update of the ones it weighs says which
    of them it gave weight (``admitted``, counted like a filter's choice)."""

    fl: FLConfig
    seed: int
    server_round: int
    last_step: np.ndarray
    root_update: np.ndarray | None = None
    admitted: list[bool] | None = None


class Defence:
    """A transform of a round's admitted updates and their weights (target tokens), before Flower's strategy."""

    name: ClassVar[str]
    uses_last_step: ClassVar[bool] = False  # the server keeps its last step with the run state for this defence
    uses_root: ClassVar[bool] = False  # the server trains on its root set each round (fedq.fl.root)
    settings: ClassVar[tuple[str, ...]] = ()  # the fl.* fields of its own it reads (fl.bucket_size): see fedq.fl.entries

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        """Refuse (ConfigError) settings this defence cannot run with; ``attackers``: the most a round can hold."""

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        return updates, weights


DEFENCES: ClassRegistry[Defence] = ClassRegistry("defences", "fl.defence", Defence)
DEFAULT_ROOT_PAIRS = 100  # FLTrust's root set (Cao et al. 2021 use 100 examples)


def root_pairs(fl: FLConfig) -> int:
    """The size of the server's root set: ``fl.root_pairs``, else 100 for a defence that uses one, else none."""
    if fl.root_pairs is not None:
        return fl.root_pairs
    return DEFAULT_ROOT_PAIRS if DEFENCES.get(fl.defence).uses_root else 0


@DEFENCES.add
class NoDefence(Defence):
    name = "none"


@DEFENCES.add
class NearestNeighbourMixing(Defence):
    name = "nnm"
    settings = ("byzantine",)

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        if fl.byzantine < attackers:
            raise ConfigError(f"fl.attackers={fl.attackers} puts up to {attackers} attackers in a round of {round_size}; "
                              f"fl.defence=nnm mixes each update with its n - fl.byzantine nearest, "
                              f"fl.byzantine={fl.byzantine}: raise fl.byzantine")

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        return nearest_neighbour_mixing(updates, view.fl.byzantine), weights


@DEFENCES.add
class Bucketing(Defence):
    name = "bucketing"
    settings = ("bucket_size",)

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        if fl.bucket_size > round_size:
            raise ConfigError(f"fl.bucket_size={fl.bucket_size} is larger than the round's {round_size} clients")
        buckets = math.ceil(round_size / fl.bucket_size)
        if attackers and buckets < STRATEGIES.make(fl.strategy).fewest_updates(fl):
            raise ConfigError(f"fl.defence=bucketing leaves {buckets} buckets of fl.bucket_size={fl.bucket_size}: too "
                              f"few for fl.strategy={fl.strategy} with fl.byzantine={fl.byzantine}")

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        rng = np.random.default_rng([view.seed, view.server_round, 0xB0C])
        return bucketing(updates, weights, view.fl.bucket_size, rng)


@DEFENCES.add
class CenteredClipping(Defence):
    name = "cclip"
    uses_last_step = True
    settings = ("clip_tau", "clip_iterations")

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        needs_plain_mean(fl)

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        return [centered_clipping(updates, view.last_step, view.fl.clip_tau, view.fl.clip_iterations)], [1.0]


def needs_plain_mean(fl: FLConfig) -> None:
    """A defence that is itself the robust mean (one update out) runs with a strategy that averages it as it is."""
    if not STRATEGIES.make(fl.strategy).plain_mean:
        raise ConfigError(f"fl.defence={fl.defence} is itself the robust mean: use it with fl.strategy=fedavg, "
                          f"not {fl.strategy}")


def nearest_neighbour_mixing(updates: list[np.ndarray], byzantine: int) -> list[np.ndarray]:
    """Each update replaced by the mean of its ``len(updates) - byzantine`` nearest (L2) updates, itself included."""
    n = len(updates)
    keep = max(1, n - byzantine)
    stacked = np.stack(updates).astype(np.float64)
    nearest = np.argsort(pairwise_squared_distances(stacked), axis=1, kind="stable")[:, :keep]
    return [stacked[rows].mean(axis=0).astype(np.float32) for rows in nearest]


def pairwise_squared_distances(stacked: np.ndarray) -> np.ndarray:
    """|x_i - x_j|^2 for every pair of rows of ``stacked`` (float64), from one Gram matrix; values that should be 0
    may come out a rounding error below it."""
    squared = np.square(stacked).sum(axis=1)
    return squared[:, None] + squared[None, :] - 2.0 * stacked @ stacked.T


def bucketing(updates: list[np.ndarray], weights: list[float], size: int,
              rng: np.random.Generator) -> tuple[list[np.ndarray], list[float]]:
    """Shuffled buckets of ``size`` updates, each replaced by its weighted mean (weight: the bucket's total)."""
    order = rng.permutation(len(updates))
    buckets, totals = [], []
    for start in range(0, len(order), size):
        members = order[start : start + size]
        w = np.array([weights[i] for i in members], np.float64)
        buckets.append((sum(w_i * updates[i].astype(np.float64) for w_i, i in zip(w, members)) / w.sum()).astype(np.float32))
        totals.append(float(w.sum()))
    return buckets, totals


def centered_clipping(updates: list[np.ndarray], center: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """Karimireddy et al.'s centered clipping: v <- v + mean_i clip(x_i - v, tau), ``iterations`` times from ``center``;
    ``tau`` 0 takes the median distance of the updates to the center."""
    v = center.astype(np.float64)
    stacked = np.stack(updates).astype(np.float64)
    if tau <= 0:
        tau = float(np.median(np.linalg.norm(stacked - v, axis=1))) or 1.0
    for _ in range(iterations):
        differences = stacked - v
        norms = np.linalg.norm(differences, axis=1, keepdims=True)
        v = v + (differences * np.minimum(1.0, tau / np.maximum(norms, 1e-12))).mean(axis=0)
    return v.astype(np.float32)


@DEFENCES.add
class DivideAndConquer(Defence):
    """Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): on a random subset of ``fl.dnc_dims`` coordinates,
    score each update by its squared projection on the top singular direction of the centred updates and drop the
    ``fl.dnc_filter`` x ``fl.byzantine`` highest; ``fl.dnc_iterations`` draws, an update kept only if every draw keeps
    it."""

    name = "dnc"
    settings = ("byzantine", "dnc_filter", "dnc_iterations", "dnc_dims")

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        if fl.byzantine < 1:
            raise ConfigError("fl.defence=dnc removes fl.dnc_filter x fl.byzantine updates a round: set fl.byzantine >= 1")
        if fl.byzantine < attackers:
            raise ConfigError(f"fl.attackers={fl.attackers} puts up to {attackers} attackers in a round of {round_size}; "
                              f"fl.defence=dnc removes {dnc_removed(fl)}: raise fl.byzantine")
        if dnc_removed(fl) >= round_size:
            raise ConfigError(f"fl.defence=dnc removes {dnc_removed(fl)} updates a round (fl.dnc_filter={fl.dnc_filter} x "
                              f"fl.byzantine={fl.byzantine}), as many as the round's {round_size} clients")
        if fl.dnc_filter <= 0 or fl.dnc_iterations < 1 or fl.dnc_dims < 1:
            raise ConfigError("fl.dnc_filter must be > 0, fl.dnc_iterations and fl.dnc_dims >= 1")

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        rng = np.random.default_rng([view.seed, view.server_round, 0xD1C])
        kept = divide_and_conquer(updates, dnc_removed(view.fl), view.fl.dnc_iterations, view.fl.dnc_dims, rng)
        return [updates[i] for i in kept], [weights[i] for i in kept]


def dnc_removed(fl: FLConfig) -> int:
    """How many updates Divide-and-Conquer removes from each draw."""
    return math.ceil(fl.dnc_filter * fl.byzantine)


def divide_and_conquer(updates: list[np.ndarray], removed: int, iterations: int, dims: int,
                       rng: np.random.Generator) -> list[int]:
    """The indices of the updates that every draw keeps (in order)."""
    good = set(range(len(updates)))
    numel = updates[0].size
    for _ in range(iterations):
        coordinates = np.sort(rng.choice(numel, size=min(dims, numel), replace=False))
        sample = np.stack([update[coordinates] for update in updates]).astype(np.float64)
        centred = sample - sample.mean(axis=0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0]  # the top right singular vector
        scores = (centred @ direction) ** 2
        good &= set(np.argsort(scores, kind="stable")[: len(updates) - removed].tolist())
    return sorted(good)


@DEFENCES.add
class FLTrust(Defence):
    """FLTrust (Cao et al., NDSS 2021): trust scores from the server's own update on its root set."""

    name = "fltrust"
    uses_root = True
    settings = ("root_pairs",)

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        self.check_root(fl)
        needs_plain_mean(fl)

    def check_root(self, fl: FLConfig) -> None:
        if root_pairs(fl) < 1:
            raise ConfigError(f"fl.defence={self.name} measures each update by its cosine to the server's own update on "
                              f"a root set that no client holds: fl.root_pairs={fl.root_pairs} leaves it none (default "
                              f"{DEFAULT_ROOT_PAIRS})")

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        assert view.root_update is not None  # the coordinator trains on the root set for a defence that uses_root
        aggregate, trust = fltrust(updates, view.root_update)
        view.admitted = [bool(t > 0) for t in trust]
        return [aggregate], [1.0]


@DEFENCES.add
class TrustFilter(FLTrust):
    """FLTrust's trust as a filter: the updates whose cosine to the server's update on its root set is positive, as
    they were sent, for the strategy to aggregate (``fl.strategy=fedmedian``: their median)."""

    name = "trustfilter"

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        self.check_root(fl)

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        assert view.root_update is not None
        trusted = fltrust(updates, view.root_update)[1] > 0
        if not trusted.any():
            return [np.zeros_like(view.root_update, np.float32)], [1.0]  # as FLTrust: nothing trusted, no step
        return [u for u, t in zip(updates, trusted) if t], [w for w, t in zip(weights, trusted) if t]


def fltrust(updates: list[np.ndarray], reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the aggregate, each update's trust score): trust ReLU(cos(update, reference)), every update rescaled to the
    reference's norm, the aggregate their trust-weighted mean (zero when no update is trusted). The clients' data
    sizes do not weigh, as in the paper: a client could claim any."""
    stacked = np.stack(updates).astype(np.float64)
    reference64 = reference.astype(np.float64)
    reference_norm = float(np.linalg.norm(reference64))
    norms = np.linalg.norm(stacked, axis=1)
    trust = np.maximum(stacked @ reference64 / np.maximum(norms * reference_norm, 1e-12), 0.0)
    if not trust.sum():
        return np.zeros_like(reference, np.float32), trust
    rescaled = stacked * (reference_norm / np.maximum(norms, 1e-12))[:, None]
    return (trust @ rescaled / trust.sum()).astype(np.float32), trust


@DEFENCES.add
class Flame(Defence):
    """FLAME (Nguyen et al., USENIX Security 2022): cluster, clip, (noise). Without noise it is a filter and clipper
    whose output the strategy aggregates (``fl.strategy=fedmedian`` takes the median of the admitted, clipped
    updates); its noise is added to one mean, so ``fl.flame_noise`` needs the plain mean."""

    name = "flame"
    settings = ("flame_noise",)

    def check(self, fl: FLConfig, round_size: int, attackers: int) -> None:
        if round_size < 3:
            raise ConfigError(f"fl.defence=flame clusters the round's updates: it needs at least 3 a round, not {round_size}")
        if fl.flame_noise:
            needs_plain_mean(fl)

    def __call__(self, updates: list[np.ndarray], weights: list[float],
                 view: RoundView) -> tuple[list[np.ndarray], list[float]]:
        admitted = flame_majority(updates)
        view.admitted = admitted
        clipped = flame_clip(updates, admitted)
        if not view.fl.flame_noise:
            return clipped, [1.0] * len(clipped)  # equal weights, as in the paper: a client could claim any size
        rng = np.random.default_rng([view.seed, view.server_round, 0xF1A])
        return [flame_aggregate(updates, admitted, view.fl.flame_noise, rng)], [1.0]


def flame_majority(updates: list[np.ndarray]) -> list[bool]:
    """Which updates are in the majority cluster of HDBSCAN on their cosine distances (min_cluster_size n/2 + 1,
    FLAME's setting; an update HDBSCAN calls noise is out, honest or not); every update when there is no cluster."""
    from sklearn.cluster import HDBSCAN  # imported here: only runs with fl.defence=flame load scikit-learn

    stacked = np.stack(updates).astype(np.float64)
    unit = stacked / np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-12)
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    labels = HDBSCAN(metric="precomputed", min_cluster_size=len(updates) // 2 + 1, min_samples=1,
                     allow_single_cluster=True, copy=True).fit(distances).labels_
    clustered = labels[labels >= 0]
    if not clustered.size:
        return [True] * len(updates)
    majority = np.bincount(clustered).argmax()
    return [bool(label == majority) for label in labels]


def flame_clip(updates: list[np.ndarray], admitted: list[bool]) -> list[np.ndarray]:
    """The admitted updates, each clipped to the median norm of all of them."""
    norms = [float(np.linalg.norm(update.astype(np.float64))) for update in updates]
    bound = float(np.median(norms))
    return [(update * min(1.0, bound / max(norm, 1e-12))).astype(np.float32)
            for update, norm, kept in zip(updates, norms, admitted) if kept]


def flame_aggregate(updates: list[np.ndarray], admitted: list[bool], noise: float, rng: np.random.Generator) -> np.ndarray:
    """The mean of the admitted updates, each clipped to the median norm of all of them, plus Gaussian noise of
    ``noise`` x that norm per value."""
    aggregate = np.mean(np.stack(flame_clip(updates, admitted)).astype(np.float64), axis=0)
    if noise:
        bound = float(np.median([np.linalg.norm(update.astype(np.float64)) for update in updates]))
        aggregate += rng.normal(0.0, noise * bound, aggregate.shape)
    return aggregate.astype(np.float32)
