"""One run, one writer: the folder lock, refusing to overwrite a run, extending a finished run, the files' modes,
the environment a run records, and checks that come before any corpus, tokenizer or Ray work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedq.checkpoint import save_checkpoint
from fedq.config import compose_config
from fedq.environment import describe_environment, environment_key
from fedq.errors import ConfigError, FedqError
from fedq.files import atomic_write, describe_write_error
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.run import run_federation
from fedq.report.compare import environment_note
from fedq.run_folder import RunFolderBusyError, RunFolderLock, holds_run, refuse_overwrite
from fedq.simulate import resumed_config, simulate
from helpers import TIME_FIELDS, TINY
from server.aggregation import FlowerAggregator



@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return f"data.cache_dir={tmp_path_factory.mktemp('cache')}"


def test_a_folder_has_one_writer_and_a_killed_holder_leaves_no_lock(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(RunFolderBusyError, match=f"{tmp_path} is in use by a running fedq process \\(pid {os.getpid()}"):
            with RunFolderLock(tmp_path):
                pass
    with RunFolderLock(tmp_path):  # released when the holder left
        pass

    script = f"from fedq.run_folder import RunFolderLock; import time\nwith RunFolderLock({str(tmp_path)!r}):\n" \
             "    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid}"):
        RunFolderLock(tmp_path).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with RunFolderLock(tmp_path):  # the kernel released it: no stale lock
        pass


def test_a_folder_that_holds_a_run_is_not_overwritten(tmp_path):
    refuse_overwrite(tmp_path)  # empty: fine
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "metrics.jsonl").write_text("")
    assert not holds_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(RunFolderBusyError, match=f"{tmp_path} already holds a run: continue or extend it with resume="):
        refuse_overwrite(tmp_path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_full_disk_names_the_file_and_the_space_left(tmp_path):
    line = describe_write_error(OSError(errno.ENOSPC, "No space left"), tmp_path / "metrics.jsonl")
    assert line.startswith(f"disk full: cannot write metrics.jsonl in {tmp_path} (")
    assert " free there; free some space or choose another folder)" in line
    quota = describe_write_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path / "x.npy")
    assert quota.startswith("disk quota exceeded: cannot write x.npy")


def _run(cfg, folder: Path, clients: Path, resume: bool = False) -> dict:
    federation = Federation(cfg)
    exchange = LocalExchange(federation, ClientStore(clients, capacity=cfg.fl.clients))
    return run_federation(cfg, folder, exchange, FlowerAggregator(cfg), resume=resume, federation=federation)


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


def test_an_extended_run_ends_as_the_run_planned_for_its_rounds(tmp_path, cache):
    # the default codecs (2-bit uplink, deltas down against what each client holds, kept on the clients' disks) and
    # FedAdam's server state: everything that continues across the extension
    overrides = [*TINY, cache, "quant.bits=2", "fl.eval_every=2", "fl.strategy=fedadam", "fl.rounds=4"]
    planned = _run(compose_config(overrides), tmp_path / "planned", tmp_path / "planned-clients")

    short = compose_config([*overrides[:-1], "fl.rounds=2"])
    _run(short, tmp_path / "extended", tmp_path / "extended-clients")
    with pytest.raises(RunFolderBusyError, match="already holds a run"):  # a fresh run into it
        _run(short, tmp_path / "extended", tmp_path / "extended-clients")
    first = _rows(tmp_path / "extended")
    assert [row["valid_bleu"] for row in first] == [None, None]  # round 2 was the last: the summary scored it

    cfg, folder = resumed_config(compose_config([*overrides[:-1], "fl.rounds=4", f"resume={tmp_path / 'extended'}"]),
                                 ["fl.rounds=4", f"resume={tmp_path / 'extended'}"])
    assert cfg.fl.rounds == 4 and folder == tmp_path / "extended"
    extended = _run(cfg, folder, tmp_path / "extended-clients", resume=True)

    assert _rows(tmp_path / "extended") == _rows(tmp_path / "planned")  # round 2 now scored too, no resync
    for key in ("rounds", "uplink_bytes", "downlink_bytes", "final_valid_bleu", "final_test_bleu"):
        assert extended[key] == planned[key], key
    assert json.loads((tmp_path / "extended" / "summary.json").read_text())["rounds"] == 4


def test_resume_refuses_what_it_would_ignore(tmp_path, cache):
    overrides = [*TINY, cache, "fl.eval_every=0", "fl.rounds=2"]
    run = tmp_path / "run"
    _run(compose_config(overrides), run, tmp_path / "clients")

    def resume(*given: str):
        return resumed_config(compose_config([*overrides, f"resume={run}", *given]), [f"resume={run}", *given])

    assert resume()[0].fl.rounds == 2  # a finished run resumed as it is: scored again
    with pytest.raises(ConfigError, match="resume= continues .* these differ from them: model.d_model=64 \\(the run has 32\\); "
                                          "quant.bits=2 \\(the run has 32\\)"):
        resume("quant.bits=2", "model.d_model=64")
    with pytest.raises(ConfigError, match="fl.rounds=1: .* has run 2 of its 2 rounds; a run can be extended, not shortened"):
        resume("fl.rounds=1")
    assert resume("fl.rounds=3", "model.d_model=32")[0].fl.rounds == 3  # a setting equal to the run's is fine


def test_init_from_of_another_shape_is_refused_before_any_corpus_work(tmp_path, cache, monkeypatch):
    federation = Federation(compose_config([*TINY, cache]))
    save_checkpoint(tmp_path / "ckpt", federation.model, federation.cfg, federation.tokenizer)

    def no_work(*args, **kwargs):
        raise AssertionError("the corpus and tokenizer were loaded before the shapes were checked")

    monkeypatch.setattr("fedq.simulate.load_task", no_work)
    cfg = compose_config([*TINY, cache, "model.d_model=64", "model.ffn_dim=128", f"init_from={tmp_path / 'ckpt'}"])
    with pytest.raises(FedqError, match=r"init_from=.*: tensor .* has shape \(\d+, 32\), this model expects \(\d+, 64\)"):
        simulate(cfg, tmp_path / "run")


def test_runs_record_their_environment_and_the_report_says_when_they_differ(tmp_path, cache):
    cfg = compose_config([*TINY, cache, "fl.num_cpus=2"])
    record = describe_environment(cfg)
    assert record["client_torch_threads"] == 2 and record["fl.num_cpus"] == 2
    assert record["packages"]["torch"].startswith("2.") and record["python"].count(".") == 2
    assert record["cpu_capability"] and record["cpu"]
    federation = Federation(cfg)
    folder = save_checkpoint(tmp_path / "ckpt", federation.model, cfg, federation.tokenizer)
    assert json.loads((folder / "meta.json").read_text())["environment"]["torch_threads"] == record["torch_threads"]

    other = {**record, "packages": {**record["packages"], "torch": "2.4.0"}}
    same = environment_key(record)
    assert environment_note([{"environment": same}, {"environment": same}]) == ""
    note = environment_note([{"environment": same}, {"environment": environment_key(other)}, {"environment": "not recorded"}])
    assert "these rows ran in 3 different environments" in note and "rows 2: " in note and "torch 2.4.0" in note


def test_fraction_beside_clients_per_round_is_refused():
    from fedq.cli import check_overrides

    with pytest.raises(ConfigError, match="fl.fraction=0.75 is not used: fl.clients_per_round=2 sets the round's size"):
        check_overrides(["fl.clients_per_round=2", "fl.fraction=0.75"])
    check_overrides(["fl.fraction=0.75"])


@pytest.mark.e2e
def test_a_refused_run_leaves_no_folder(tmp_path, cache):
    run = tmp_path / "done"
    _run(compose_config([*TINY, cache, "fl.eval_every=0", "fl.rounds=1"]), run, tmp_path / "clients")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for arguments, why in ((["fl.num_cpus=64", f"hydra.run.dir={elsewhere / 'new'}"], "fl.num_cpus=64 but this machine"),
                           (["fl.num_cpus=64"], "fl.num_cpus=64 but this machine"),  # into Hydra's outputs/DATE/TIME
                           ([f"resume={run}", "quant.bits=2"], "resume= continues")):  # resume= writes only into RUN
        result = subprocess.run([sys.executable, "-m", "fedq.simulate", *arguments], cwd=elsewhere,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {why}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert list(elsewhere.iterdir()) == [], list(elsewhere.rglob("*"))
