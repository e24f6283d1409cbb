"""Runs that never hang, never lose finished work, resume where they stopped, and never score a corrupt file.

The simulations here are real: Flower's SuperLink, Ray, the ServerApp and ClientApp.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedq.config import compose_config, validate_config
from fedq.errors import FedqError
from fedq.files import FileWriteError, atomic_write
from fedq.fl.protocol import Reply
from fedq.fl.rounds import Coordinator, RoundFailedError
from fedq.simulate import check_client_resources
from fedq.superlink import _descendants
from helpers import tiny_federation
from server.aggregation import FlowerAggregator

TINY = [  # the default codecs both ways: 2-bit uplink, 4-bit deltas down that build on what each client holds
    "clients=3", "fl.clients_per_round=2", "fl.local_steps=6", "fl.eval_every=0", "quant.bits=2",
    "data.demo_train_size=600", "data.demo_eval_size=20", "data.vocab_size=300",
    "model.d_model=32", "model.ffn_dim=64",
]
TIME_FIELDS = ("wall_seconds", "eval_seconds", "client_train_seconds", "client_encode_seconds", "server_decode_seconds")


def simulate(*overrides: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedq.simulate", *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen,
    )


def running(pid: int) -> bool:
    """True for a process that exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rows_without_times(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


def test_interrupted_simulation_stops_in_seconds_and_resumes_to_the_same_end(tmp_path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run = simulate(*TINY, "fl.rounds=5", cache, f"hydra.run.dir={whole}")
    assert run.wait(timeout=300) == 0, run.stdout.read()[-3000:]

    process = simulate(*TINY, "fl.rounds=5", cache, f"hydra.run.dir={stopped}")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("round 2/5"):
            break
    tree = _descendants(process.pid)
    assert tree, "the simulation runs in child processes (SuperLink, Flower's simulation, Ray)"
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)  # Ctrl-C
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=60) == 130
    assert time.monotonic() - interrupted < 30
    alive = [pid for pid in tree if running(pid)]
    assert not alive, f"processes left running: {alive}"
    assert f"continue with: python -m fedq.simulate resume={stopped}" in output
    state = json.loads((stopped / "state" / "state.json").read_text())
    assert state["rounds"] >= 2 and not (stopped / "summary.json").exists()

    resumed = simulate(f"resume={stopped}", f"hydra.run.dir={tmp_path / 'resume-command'}")
    output = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 0, output[-3000:]
    assert f"resuming after round {state['rounds']} of 5" in output

    # The same rows (bytes, clients, losses) and bit-identical final weights as the uninterrupted run: the server's
    # memory of what each client holds and the clients' own files were saved with the rounds.
    assert rows_without_times(stopped) == rows_without_times(whole)
    assert all(row["resynced"] == 0 for row in rows_without_times(stopped))
    a, b = (json.loads((run_dir / "summary.json").read_text()) for run_dir in (whole, stopped))
    for key in ("rounds", "uplink_bytes", "downlink_bytes", "final_test_bleu"):
        assert a[key] == b[key], key
    weights_a, weights_b = (load_file(run_dir / "checkpoint" / "model.safetensors") for run_dir in (whole, stopped))
    assert all(np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_requested_client_resources_are_compared_with_the_machine():
    cfg = compose_config(["fl.num_cpus=3"])
    with pytest.raises(FedqError, match="fl.num_cpus=3 but this machine has 2 CPUs"):
        check_client_resources(cfg, 2, 0, "this machine")
    with pytest.raises(FedqError, match="fl.num_gpus=0.25 but this machine has no GPU"):
        check_client_resources(compose_config(["fl.num_gpus=0.25"]), 2, 0, "this machine")
    check_client_resources(compose_config(["fl.num_gpus=0.25"]), 2, 1, "this machine")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.num_gpus=1"], "no GPU"),
        (["fl.num_cpus=99"], "fl.num_cpus=99"),
        (["partition=natural"], "needs talk ids"),
        (["model.n_heads=3"], "not divisible"),
        (["quant.bits=0"], "quant.bits=0"),
        (["init_from=/nonexistent/checkpoint"], "/nonexistent/checkpoint"),
        (["fl.local_lr=-1"], "fl.local_lr=-1"),
    ],
)
def test_bad_simulation_settings_fail_in_seconds_with_one_line(tmp_path, overrides, message):
    if overrides == ["fl.num_gpus=1"] and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", *overrides, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "corpus" not in result.stdout  # failed before any corpus, tokenizer or Ray work
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    "override",
    ["train.max_steps=-5", "decode.beam=0", "comm.uplink.density=1.5", "fl.checkpoint_every=0", "data.max_len=0",
     "partition.alpha=0", "eval.src=a.de"],
)
def test_settings_that_were_accepted_silently_are_rejected(override):
    extra = ["partition=dirichlet"] if override.startswith("partition") else []
    with pytest.raises(FedqError):
        validate_config(compose_config([*extra, override]))


def test_a_round_in_which_no_client_delivers_stops_the_run_with_the_clients_error(tmp_path):
    federation = tiny_federation(f"data.cache_dir={tmp_path}")
    server = Coordinator(federation, FlowerAggregator(federation.cfg))
    failing = lambda requests: [Reply(r.partition, error="CUDA out of memory") for r in requests]  # noqa: E731
    with pytest.raises(RoundFailedError, match="round 3: 0 usable updates of 2 sampled.*2 crashed.*CUDA out of memory"):
        server.run_round(3, federation.initial_vector(), failing)


def test_train_interrupted_by_sigterm_keeps_a_checkpoint_that_evaluate_scores(tmp_path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    small = ["data.demo_train_size=800", "data.demo_eval_size=10", "data.vocab_size=300", "model.d_model=32",
             "model.ffn_dim=64", "train.log_every=5", "train.max_steps=100000", cache]
    process = subprocess.Popen(
        [sys.executable, "-m", "fedq.train", *small, f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stdout:
        if line.startswith("step 15/"):
            break
    process.send_signal(signal.SIGTERM)
    output = process.stdout.read()
    assert process.wait(timeout=60) == 130, output
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    assert meta["steps"] >= 15 and meta["train_loss"] > 0
    assert f"interrupted at step {meta['steps']}" in output
    scored = subprocess.run(
        [sys.executable, "-m", "fedq.evaluate", f"ckpt={tmp_path / 'checkpoint'}", cache, f"hydra.run.dir={tmp_path / 'e'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert scored.returncode == 0 and "test (deployed form): BLEU" in scored.stdout, scored.stderr


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "results" / "summary.json"
    atomic_write(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FileWriteError, match=f"disk full: cannot write summary.json in {target.parent}"):
        atomic_write(target, "new" * 1000)
    assert target.read_text() == "old"  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]  # no temp file left behind


def test_a_cache_folder_that_cannot_be_created_names_the_setting(tmp_path):
    from fedq.task import load_task

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should go")
    cache = blocker / "cache"
    with pytest.raises(FileWriteError, match=f"data.cache_dir={cache}: cannot write"):
        load_task(compose_config(["data.demo_train_size=200", "data.demo_eval_size=10", "data.vocab_size=100",
                                  f"data.cache_dir={cache}"]))


def test_a_flipped_bit_in_checkpoint_weights_is_refused(tmp_path):
    from fedq.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
    from fedq.task import build_model, load_task

    cfg = compose_config(["data.demo_train_size=200", "data.demo_eval_size=10", "data.vocab_size=100",
                          f"data.cache_dir={tmp_path / 'cache'}", "model.d_model=32", "model.ffn_dim=64"])
    task = load_task(cfg)
    save_checkpoint(tmp_path / "ckpt", build_model(cfg, task.tokenizer), cfg, task.tokenizer)
    path = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(tmp_path / "ckpt").state_dict()
