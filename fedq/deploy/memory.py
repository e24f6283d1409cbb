"""Peak resident memory of one deployment variant translating the test set, each in a process of its own.

A device runs one engine in its process; measured in the process that built and
timed them all, a variant's peak would carry every engine loaded before it. So
``fedq.deploy`` runs ``python -m fedq.deploy.memory`` once per variant: the
child reads the checkpoint's tokenizer and the test sentences, notes its
resident memory (the floor every variant shares: Python, torch, the tokenizer
and fedq's decoding loop) and resets the kernel's record of its peak, loads the
variant from its folder, translates the sentences at the table's batch size,
and prints the process's peak resident memory since the reset (``VmHWM``) and
that peak above the floor (the variant's engine, its weights and its working
memory) as one JSON line. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from fedq.checkpoint import read_checkpoint
from fedq.data.corpora import load_corpus
from fedq.deploy.registry import make_variant
from fedq.deploy.settings import DeployConfig
from fedq.deploy.variant import Source
from fedq.model.decoding import DecodeConfig

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing 5 resets the peak (VmHWM) to the resident memory now


def measurable() -> bool:
    """Peak memory is read from Linux's /proc (the peak can be reset there; getrusage's cannot)."""
    return STATUS.is_file() and CLEAR_REFS.exists()


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: the peak since the last reset), in MB."""
    line = next(line for line in STATUS.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def peak_memory(ckpt: Path, variant: str, folder: Path, sentences: int, threads: int, deploy: DeployConfig,
                decode: DecodeConfig) -> dict[str, float]:
    """``{"peak_mb", "above_floor_mb"}`` of ``variant`` (built in ``folder``) in a fresh process."""
    settings = json.dumps({"deploy": asdict(deploy), "decode": asdict(decode)})
    command = [sys.executable, "-m", "fedq.deploy.memory", str(ckpt), variant, str(folder), str(sentences),
               str(threads), settings]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory measurement of {variant} failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(ckpt: Path, variant: str, folder: Path, sentences: int, threads: int, deploy: DeployConfig,
            decode: DecodeConfig) -> dict[str, float]:
    """This process's peak memory for loading ``variant`` and translating the first ``sentences`` test pairs."""
    checkpoint = read_checkpoint(ckpt)
    source = Source(checkpoint, decode)
    test = [s for s, _ in load_corpus(checkpoint.config.data).test][: sentences or None]
    CLEAR_REFS.write_text("5")
    floor = status_mb("VmRSS")
    translator = make_variant(variant, deploy).load(folder, source)
    translator.translate(test, deploy.batch_size, threads)
    peak = status_mb("VmHWM")
    return {"peak_mb": peak, "above_floor_mb": peak - floor}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("ckpt", type=Path)
    p.add_argument("variant")
    p.add_argument("folder", type=Path)
    p.add_argument("sentences", type=int, help="test pairs translated (0 = all)")
    p.add_argument("threads", type=int)
    p.add_argument("settings", type=json.loads, help='the run\'s settings: {"deploy": {...}, "decode": {...}}')
    args = p.parse_args()
    deploy, decode = DeployConfig(**args.settings["deploy"]), DecodeConfig(**args.settings["decode"])
    answer = measure(args.ckpt, args.variant, args.folder, args.sentences, args.threads, deploy, decode)
    print(json.dumps(answer))  # what the parent process reads, not a message


if __name__ == "__main__":
    main()
