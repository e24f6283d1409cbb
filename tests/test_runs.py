"""Runs that never hang, never lose finished work, resume where they stopped, and never score a corrupt file.

The simulations here are real: Flower's SuperLink, Ray, the ServerApp and ClientApp.
"""

from __future__ import annotations

import contextlib
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
from fedq.files import FileWriteError, atomic_write, describe_write_error
from fedq.fl.protocol import Reply
from fedq.fl.rounds import Coordinator, RoundFailedError
from fedq.fl.state import load_state
from fedq.simulate import check_client_resources
from fedq.supervise import descendants
from helpers import TIME_FIELDS, TINY_DEMO, tiny_federation
from server.aggregation import FlowerAggregator

TINY = [  # the default codecs both ways: 2-bit uplink, 4-bit deltas down that build on what each client holds
    "clients=3", "fl.clients_per_round=2", "fl.local_steps=6", "fl.eval_every=0", "quant.bits=2", *TINY_DEMO,
]


def simulate(*overrides: str, **popen: object) -> subprocess.Popen:
    """``fedq.simulate`` with Ctrl-C's default meaning, also when pytest runs in the background of a shell that
    ignores SIGINT (its children would inherit that)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedq.simulate", *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
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


@pytest.mark.e2e
def test_interrupted_simulation_stops_in_seconds_and_resumes_to_the_same_end(tmp_path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run = simulate(*TINY, "fl.rounds=5", cache, f"hydra.run.dir={whole}")
    first = run.stdout.readline()  # the corpus line: the driver has held the folder since before it built the corpus
    # One writer: a second driver into the folder of a running one is refused with one line, whatever it asks
    second = subprocess.run([sys.executable, "-m", "fedq.simulate", *TINY, cache, f"hydra.run.dir={whole}"],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"error: {whole} is in use by a running fedq process (pid {run.pid}" in second.stderr
    assert run.wait(timeout=300) == 0, (first + run.stdout.read())[-3000:]
    assert [row["round"] for row in rows_without_times(whole)] == [1, 2, 3, 4, 5]  # one writer's rows

    process = simulate(*TINY, "fl.rounds=5", cache, f"hydra.run.dir={stopped}")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("round 2/5"):
            break
    tree = descendants(process.pid)
    assert tree, "the simulation runs in child processes (SuperLink, Flower's simulation, Ray)"
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)  # Ctrl-C
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=60) == 130
    assert time.monotonic() - interrupted < 30
    shown = json.loads((stopped / "metrics.jsonl").read_text().splitlines()[-1])["round"]
    assert all(f"round {r}/5 | " in output for r in range(1, shown + 1))  # every finished round's line, the last too
    alive = [pid for pid in tree if running(pid)]
    assert not alive, f"processes left running: {alive}"
    assert f"continue with: python -m fedq.simulate resume={stopped}" in output
    state = json.loads((stopped / "state" / "state.json").read_text())
    assert state["rounds"] >= 2 and not (stopped / "summary.json").exists()

    # Resumed, then killed with SIGKILL (no handler runs): every process it started still ends, Flower's home goes.
    killed = simulate(f"resume={stopped}", f"hydra.run.dir={tmp_path / 'resume-command'}")
    for line in killed.stdout:
        if line.startswith("round "):  # its first round (the interrupted run may have saved round 3 or 4 already)
            break
    tree = descendants(killed.pid)
    assert tree, "the resumed run ended before its first round's line came"
    homes = {path for pid in tree for path in _flower_homes(pid)}
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    deadline = time.monotonic() + 30
    while [pid for pid in tree if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in tree if running(pid)], "a process outlived the killed driver"
    assert homes and not any(home.exists() for home in homes)
    saved = json.loads((stopped / "state" / "state.json").read_text())["rounds"]
    (stopped / "failure.json").write_text(json.dumps({"error": "an earlier failure"}))  # a stale one

    resumed = simulate(f"resume={stopped}", f"hydra.run.dir={tmp_path / 'resume-command'}")
    output = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 0, output[-3000:]
    assert f"resuming after round {saved} of 5" in output and not (stopped / "failure.json").exists()
    assert "\x1b[" not in output  # no raw colour codes of Flower's log

    # The same rows (bytes, clients, losses) and bit-identical final weights as the uninterrupted run: the server's
    # memory of what each client holds and the clients' own files were saved with the rounds.
    assert rows_without_times(stopped) == rows_without_times(whole)
    assert all(row["resynced"] == 0 for row in rows_without_times(stopped))
    a, b = (json.loads((run_dir / "summary.json").read_text()) for run_dir in (whole, stopped))
    for key in ("rounds", "uplink_bytes", "downlink_bytes", "final_test_bleu"):
        assert a[key] == b[key], key
    weights_a, weights_b = (load_file(run_dir / "checkpoint" / "model.safetensors") for run_dir in (whole, stopped))
    assert all(np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)



def _flower_homes(pid: int) -> list[Path]:
    """The temporary Flower homes (FLWR_HOME) a process of the tree was started with."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []
    return [Path(item.split(b"=", 1)[1].decode()) for item in env if item.startswith(b"FLWR_HOME=")]


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
@pytest.mark.e2e
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


@pytest.mark.e2e
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


def test_a_full_disk_mid_run_stops_with_one_line_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import fedq.fl.state as state_module
    from fedq.fl.client import LocalExchange
    from fedq.fl.client_state import ClientStore
    from fedq.fl.run import run_federation

    federation = tiny_federation(f"data.cache_dir={tmp_path / 'cache'}", "fl.rounds=3", "fl.eval_every=0")
    cfg = federation.cfg
    real, calls = state_module.atomic_write, []

    def fills_up(path, data):  # the state of round 1 is written whole, round 2's hits a full disk
        if Path(path).name == "arrays.safetensors" and any(Path(p).name == "state.json" for p in calls):
            raise FileWriteError(describe_write_error(OSError(errno.ENOSPC, "No space left"), Path(path)))
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(state_module, "atomic_write", fills_up)
    with pytest.raises(FileWriteError, match="disk full: cannot write"):
        run_federation(cfg, tmp_path / "run", LocalExchange(federation, ClientStore(None)), FlowerAggregator(cfg),
                       federation=federation)
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["rounds"] == 1


@pytest.mark.e2e
def test_a_disk_that_fills_mid_simulation_ends_it_with_one_line_and_failure_json(tmp_path):
    """A real small filesystem (tmpfs, where this machine lets the test mount one) filled after round 1: Flower, Ray,
    the clients and the server all see ENOSPC; the user sees one line, and the last saved state is whole."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; the in-process full-disk tests above cover the writers")
    try:
        run, filler = disk / "run", disk / "filler"
        process = simulate(*TINY, "fl.rounds=4", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}")
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("round 1/4"):
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
                for size in (1 << 20, 1 << 12, 1):  # fill what is left, to the last byte
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, bytes(size))
                os.close(fd)
                break
        after = process.stdout.read()
        assert process.wait(timeout=300) == 2, after
        assert [line for line in after.splitlines() if not line.startswith(("round ", "error: "))] == [], after
        errors = [line for line in after.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, after
        assert "disk full: cannot write" in errors[0] and "free there" in errors[0] and str(disk) in errors[0], errors
        assert json.loads((run / "failure.json").read_text())["error"] in errors[0]
        assert load_state(run).rounds >= 1  # the last state written whole is intact: resume= continues from it
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_results_folder_that_turns_read_only_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from fedq.report.run_log import RunLog, write_failure

    log = RunLog(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(FileWriteError, match=f"cannot write metrics.jsonl in {tmp_path}: the folder is read-only"):
        log.write_round({"round": 1})
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: read_only())
    assert write_failure(tmp_path, "round 3: disk full").startswith("cannot write failure.json in")
    assert not (tmp_path / "failure.json").exists()


@pytest.mark.e2e
def test_an_unwritable_results_folder_is_refused_before_anything_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", f"hydra.run.dir={blocker / 'run'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot write") and "hydra.run.dir" in result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["config", "weights", "checksum"])
def test_a_damaged_checkpoint_is_refused_by_evaluate_and_deploy(tmp_path, damage):
    from fedq.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
    from fedq.task import build_model, load_task

    cfg = compose_config(["data.demo_train_size=200", "data.demo_eval_size=10", "data.vocab_size=100",
                          f"data.cache_dir={tmp_path / 'cache'}", "model.d_model=32", "model.ffn_dim=64"])
    task = load_task(cfg)
    folder = save_checkpoint(tmp_path / "ckpt", build_model(cfg, task.tokenizer), cfg, task.tokenizer)
    if damage == "config":
        (folder / "config.yaml").write_text("data: [unclosed")
    elif damage == "weights":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-5] ^= 1
        (folder / "model.safetensors").write_bytes(bytes(data))
    else:
        meta = json.loads((folder / "meta.json").read_text())
        meta["weights_sha256"] = "0" * 64
        (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError if damage != "config" else FedqError):
        read_checkpoint(folder)
    for module in ("fedq.evaluate", "fedq.deploy"):
        result = subprocess.run([sys.executable, "-m", module, f"ckpt={folder}", f"hydra.run.dir={tmp_path / 'out'}"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert ("not a valid fedq config" if damage == "config" else "is damaged") in result.stderr


def test_clients_that_hold_the_same_model_share_one_saved_file_and_a_kept_version_is_not_written_again(tmp_path):
    from fedq.fl.state import ServerState, save_state

    seeded_delta, own = np.arange(10, dtype=np.float32), np.ones(10, np.float32)
    save_state(tmp_path, ServerState(1, own, held={3: (1, seeded_delta), 5: (1, seeded_delta), 8: (1, own)}))
    held = tmp_path / "state" / "held"
    assert len(list(held.glob("*.npy"))) == 2
    loaded = load_state(tmp_path).held
    assert loaded[3][1] is loaded[5][1] and loaded[8][0] == 1
    np.testing.assert_array_equal(loaded[5][1], seeded_delta)
    written = {path.name: path.stat().st_mtime_ns for path in held.glob("*.npy")}
    save_state(tmp_path, ServerState(2, own, held={3: (1, seeded_delta.copy()), 9: (2, own + 1)}))  # 5 and 8 forgotten
    after = {path.name: path.stat().st_mtime_ns for path in held.glob("*.npy")}
    assert len(after) == 2 and all(written[name] == after[name] for name in after if name in written)
    assert load_state(tmp_path).held[3][0] == 1 and load_state(tmp_path).held[9][0] == 2


@pytest.mark.e2e
def test_a_damaged_run_state_is_refused_before_the_corpus_and_ray(tmp_path):
    from fedq.fl.state import ServerState, save_state

    run = tmp_path / "run"
    save_state(run, ServerState(2, np.zeros(10, np.float32), config_yaml="seed: 1\n"))
    arrays = run / "state" / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-3] + b"xyz")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", f"resume={run}", f"hydra.run.dir={tmp_path / 'x'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is damaged: its SHA-256 does not match state.json" in result.stderr
    assert "corpus" not in result.stdout and time.monotonic() - started < 20
    (run / "state" / "state.json").write_text(json.dumps({"rounds": 2, "config": "data: [unclosed"}))
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", f"resume={run}", f"hydra.run.dir={tmp_path / 'x'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a valid fedq config" in result.stderr
