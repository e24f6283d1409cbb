"""What a run ran on: package versions, Python, the CPU and its instruction set, the thread settings.

Seeded runs are bit-identical on one machine, but another torch, another CPU
kernel (AVX2 against AVX-512) or another thread count changes the float sums
from the first step. ``summary.json`` and a checkpoint's ``meta.json`` keep this
record, so a difference can be traced, and ``fedq.report`` says when the rows of
one table come from different environments.
"""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from fedq.config import FedqConfig
from fedq.fl.settings import client_threads

PACKAGES = ("fedq", "torch", "flwr", "ray", "numpy", "sacrebleu", "sentencepiece", "hydra-core", "safetensors", "constriction")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
_SIMD = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx_vnni|avx512\w*|amx\w*|asimd\w*|sve\w*|neon)$")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_description() -> tuple[str, list[str]]:
    """(the CPU's model name, its SIMD flags) from /proc/cpuinfo; the platform's processor string elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.split(":", 1)[0].strip() in ("model name", "Model", "cpu model")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.split(":", 1)[0].strip() in ("flags", "Features")), [])
    return model, sorted({flag for flag in flags if _SIMD.match(flag)})


def describe_environment(cfg: FedqConfig) -> dict[str, Any]:
    model, flags = cpu_description()
    record: dict[str, Any] = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "cpu": model,
        "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "client_torch_threads": client_threads(cfg.fl),
        "fl.num_cpus": cfg.fl.num_cpus,
        "threads_setting": cfg.threads,
        "variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
    }
    if torch.cuda.is_available():
        record["cuda"] = {"version": torch.version.cuda, "device": torch.cuda.get_device_name(0)}
    return record


def environment_key(record: dict[str, Any] | None) -> str:
    """What two runs must share to be compared without a note: one line, or ``not recorded``."""
    if not record:
        return "not recorded"
    packages = record.get("packages", {})
    return "; ".join([f"Python {record.get('python')}", f"torch {packages.get('torch')}", f"flwr {packages.get('flwr')}",
                      f"numpy {packages.get('numpy')}", f"{record.get('cpu')} ({record.get('cpu_capability')})",
                      f"{record.get('torch_threads')} server / {record.get('client_torch_threads')} client torch threads"])
