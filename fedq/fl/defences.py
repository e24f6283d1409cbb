"""Defences that hold against collusive attackers, applied to the decoded updates before Flower's strategy.

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

All of them work on decoded updates, whatever the uplink codec, and on the
buffer of an asynchronous round as on a synchronous round's replies.
"""

from __future__ import annotations

import numpy as np

DEFENCES = ("none", "nnm", "bucketing", "cclip")


def nearest_neighbour_mixing(updates: list[np.ndarray], byzantine: int) -> list[np.ndarray]:
    """Each update replaced by the mean of its ``len(updates) - byzantine`` nearest (L2) updates, itself included."""
    n = len(updates)
    keep = max(1, n - byzantine)
    stacked = np.stack(updates).astype(np.float64)
    squared = np.square(stacked).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * stacked @ stacked.T
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :keep]
    return [stacked[rows].mean(axis=0).astype(np.float32) for rows in nearest]


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
