"""What a resumed federated run needs, written atomically after a round: no pickle, checksummed.

    state/arrays.safetensors   the global weight vector and the server optimizer's arrays
    state/held/R.SHA.npy       a model clients hold since round R (SHA: 16 hex of its SHA-256), for the clients the
                               server remembers (``comm.downlink.cache_mb``); written once per version, one file
                               for every client that holds the same model (the round's delta from the seeded one)
    state/state.json           rounds completed, SHA-256 of the arrays file, which held models belong
                               to this state, the untrained model's BLEU, wall seconds so far, the config

The JSON is written last, so it only ever names files that are complete; held
models that no saved state names are removed after it. Everything else a run
needs to continue is on disk already (metrics.jsonl with the rows and the byte
counters; the clients' own files, ``fedq.fl.client_state``) or a function of
the seed and the round number (client sampling, codec randomness, the clients'
data order, the faults).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedq.config import FedqConfig, config_from_yaml
from fedq.errors import FedqError
from fedq.files import atomic_write

STATE_DIR = "state"
ARRAYS_FILE = "arrays.safetensors"
STATE_FILE = "state.json"
HELD_DIR = "held"
WEIGHTS = "global_weights"


class RunStateError(FedqError):
    """A run folder that cannot be resumed."""


@dataclass
class ServerState:
    rounds: int  # rounds completed
    vector: np.ndarray  # the global weights after those rounds
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. FedAdam's moments
    held: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # client -> (round synced, model it holds)
    initial_valid_bleu: float | None = None
    wall_seconds: float = 0.0
    config_yaml: str = ""


def save_state(run_dir: Path, state: ServerState) -> None:
    folder = Path(run_dir) / STATE_DIR
    arrays = save({WEIGHTS: state.vector, **state.optimizer})
    atomic_write(folder / ARRAYS_FILE, arrays)
    held_dir = folder / HELD_DIR
    on_disk = {path.name for path in held_dir.glob("*.npy")} if held_dir.is_dir() else set()
    before = _previous_held(run_dir) if on_disk else {}
    names: dict[str, str] = {}
    by_model: dict[int, str] = {}  # clients that hold the very same array share its file
    for partition, (synced, model) in state.held.items():
        name = before.get(str(partition), "")
        if name not in on_disk or _held_round(name) != synced:  # what a client holds since a round never changes
            name = by_model.get(id(model), "")
        if not name:
            buffer = io.BytesIO()
            np.save(buffer, model, allow_pickle=False)
            data = buffer.getvalue()
            name = f"{synced}.{hashlib.sha256(data).hexdigest()[:16]}.npy"
            if name not in on_disk:
                atomic_write(held_dir / name, data)
                on_disk.add(name)
        by_model[id(model)] = names[str(partition)] = name
    record = {
        "rounds": state.rounds,
        "arrays_sha256": hashlib.sha256(arrays).hexdigest(),
        "optimizer_arrays": sorted(state.optimizer),
        "held": names,
        "initial_valid_bleu": state.initial_valid_bleu,
        "wall_seconds": state.wall_seconds,
        "config": state.config_yaml,
    }
    atomic_write(folder / STATE_FILE, json.dumps(record, indent=2))
    if held_dir.is_dir():
        for path in held_dir.glob("*.npy"):
            if path.name not in names.values():
                path.unlink(missing_ok=True)


def _held_round(name: str) -> int:
    """The round of a held model's file name (``R.SHA.npy``; runs saved before files were shared: ``P.R.SHA.npy``)."""
    return int(name.split(".")[-3])


def _previous_held(run_dir: Path) -> dict[str, str]:
    """The held models' files the last saved state names ({client: file}); none if it cannot be read."""
    try:
        return dict(_read_record(run_dir).get("held") or {})
    except RunStateError:
        return {}


def _read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise RunStateError(f"{run_dir} holds no saved run state ({STATE_DIR}/{STATE_FILE}); nothing to resume")
    try:
        record = json.loads(path.read_text())
        int(record["rounds"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunStateError(f"cannot read {path}: {err}") from None


def load_state(run_dir: Path) -> ServerState:
    """The saved state, every file checked; a damaged one is one RunStateError line."""
    folder = Path(run_dir) / STATE_DIR
    record = _read_record(run_dir)
    try:
        data = (folder / ARRAYS_FILE).read_bytes()
    except OSError as err:
        raise RunStateError(f"cannot read {folder / ARRAYS_FILE}: {err.strerror}") from None
    if hashlib.sha256(data).hexdigest() != record.get("arrays_sha256"):
        raise RunStateError(f"{folder / ARRAYS_FILE} is damaged: its SHA-256 does not match {STATE_FILE}")
    try:
        arrays = load(data)
    except SafetensorError as err:
        raise RunStateError(f"cannot read {folder / ARRAYS_FILE}: {err}") from None
    held, models = {}, {}
    for partition, name in (record.get("held") or {}).items():
        path = folder / HELD_DIR / name
        try:
            if name not in models:  # a file several clients share is read once
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest()[:16] != name.split(".")[-2]:
                    raise RunStateError(f"{path} is damaged: its SHA-256 does not match its name")
                models[name] = np.load(io.BytesIO(data), allow_pickle=False)
            held[int(partition)] = (_held_round(name), models[name])
        except (OSError, ValueError, IndexError) as err:
            raise RunStateError(f"cannot read {path}: {err}") from None
    return ServerState(
        rounds=int(record["rounds"]),
        vector=arrays.pop(WEIGHTS),
        optimizer=arrays,
        held=held,
        initial_valid_bleu=record.get("initial_valid_bleu"),
        wall_seconds=float(record.get("wall_seconds", 0.0)),
        config_yaml=record.get("config", ""),
    )


def saved_config(run_dir: Path) -> FedqConfig:
    """The config a run was started with (from its state), to resume it with."""
    return config_from_yaml(_read_record(run_dir).get("config", ""), f"{run_dir}/{STATE_DIR}/{STATE_FILE}")
