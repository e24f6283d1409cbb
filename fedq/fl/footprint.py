"""What a simulated federation will need of this machine, estimated before anything starts.

Memory grows with the clients of a round, not with the fleet: the processes
themselves, the model in the server and in each Ray actor that trains clients
side by side, the server's memory of what clients hold (at most
``comm.downlink.cache_mb``) and the round's messages. Disk holds the clients'
shards, what the clients keep (the held models the server remembers, and an
error-feedback residual per client that has one) and the run state. A fleet that
does not fit is refused with the estimate and the settings that change it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fedq.comm.downlink import cache_capacity
from fedq.errors import ConfigError
from fedq.files import format_bytes
from fedq.fl.federation import Federation
from fedq.fl.settings import clients_sampled

# driver, SuperLink, Flower's simulation, Ray's daemons, two actors' imports (measured: 3.1 GB at 20 clients)
PROCESSES_BYTES = 3.0e9
WORKING_COPIES = 8  # a model being trained: weights, latent QAT weights, gradients, Adam's two moments, vectors


@dataclass
class Footprint:
    memory: dict[str, float] = field(default_factory=dict)
    disk: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def describe(parts: dict[str, float]) -> str:
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in sorted(parts.items(), key=lambda p: -p[1]) if size > 0)


def estimate(federation: Federation, actors: int) -> Footprint:
    cfg, model = federation.cfg, 4.0 * federation.numel
    k = clients_sampled(cfg.fl)
    held = min(cache_capacity(cfg.comm.downlink.cache_mb, federation.numel), cfg.fl.clients)
    down, up = federation.message_bytes()
    memory = {
        "processes": PROCESSES_BYTES,
        "models in training": (actors + 1) * WORKING_COPIES * model,
        "held models the server remembers": held * model,
        "a round's messages": 4 * k * (down + up),  # held by the ServerApp, the SuperLink, the simulation, the actor
    }
    disk = {
        "shards": 4.0 * len(federation.data.tokens),
        "held models (server and clients)": 3 * held * model,
        "error-feedback residuals": cfg.fl.clients * model if federation.error_feedback else 0.0,
    }
    return Footprint(memory, disk)


def available_memory() -> float:
    """MemAvailable of /proc/meminfo, in bytes (infinite where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def check_fits(federation: Federation, out_dir: Path) -> Footprint:
    """Refuse (one line) a federation whose estimate is beyond this machine's free memory or disk."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    footprint = estimate(federation, max(1, int(cpus // federation.cfg.fl.num_cpus)))
    need, have = sum(footprint.memory.values()), available_memory()
    if need > have:
        raise ConfigError(
            f"this federation needs about {format_bytes(need)} of memory ({Footprint.describe(footprint.memory)}) but "
            f"{format_bytes(have)} are free: lower fl.clients_per_round or comm.downlink.cache_mb, or use a smaller model")
    folder = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    need, have = sum(footprint.disk.values()), float(shutil.disk_usage(folder).free)
    if need > have:
        advice = {"shards": "use fewer clients or a smaller corpus",
                  "held models (server and clients)": "lower comm.downlink.cache_mb",
                  "error-feedback residuals": "use an unbiased uplink codec (no residuals) or fewer clients"}
        largest = max(footprint.disk, key=lambda name: footprint.disk[name])
        raise ConfigError(
            f"this federation needs about {format_bytes(need)} of disk ({Footprint.describe(footprint.disk)}) but {folder} "
            f"has {format_bytes(have)} free: {advice.get(largest, 'free some space')}, free some space, or choose another "
            "hydra.run.dir")
    return footprint
