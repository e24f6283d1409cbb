"""What a client keeps between its rounds: the model it holds and its error-feedback residual, on disk.

Nothing a client keeps stays in RAM between its rounds: one small set of files
per client, written atomically (a kill leaves the last complete version; they
are not synced to the disk, since a lost file only costs a resync), read when
the client is next sampled. Both parts are optional:

- the **held model** (``PARTITION.ROUND.held.npy``): only when the server asks the
  client to keep it (``keep``: the server remembers it too, so that the next delta
  builds on it). In a simulation every client shares one folder, which keeps the
  held models of at most ``capacity`` clients, the least recently synced
  forgotten first, as the server forgets them (``fedq.comm.downlink.Broadcaster``),
  after each batch of clients a node plays (:meth:`ClientStore.evict`);
- the **residual** (``PARTITION.ROUND.residual.npy``) of a biased uplink codec with
  error feedback: kept for every client that has one;
- with secure aggregation (``fl.secagg``), the round's **secrets**
  (``PARTITION.ROUND.secagg.npz``: its update until it is masked, its private keys,
  its mask seed and its neighbours' public keys) between the stages of the round,
  deleted when it has revealed its shares (or at its next round). A client
  without a folder keeps them in memory.

Each save keeps the version the round started from beside the new one, so that a
run resumed from the last saved round finds what its server expects the client
to hold. A client whose files are gone holds nothing: a normal case, answered
with a resync (``fedq.fl.client``).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.files import atomic_write

CLIENT_STATE_DIR = "client_state"  # in a simulation: the clients' folder inside the run folder
_FILE = re.compile(r"^(\d+)\.(\d+)\.(held|residual)\.npy$")


@dataclass
class ClientState:
    held: np.ndarray | None = None
    held_round: int | None = None
    residual: np.ndarray | None = None


class ClientStore:
    """The clients' files in ``folder`` (None: a client keeps nothing); held models of at most ``capacity``
    clients (None: no bound, as on a device that is one client)."""

    def __init__(self, folder: Path | None, capacity: int | None = None) -> None:
        self.folder = folder
        self.capacity = capacity
        self.secrets: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # without a folder

    def _secret_path(self, partition: int, server_round: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{partition}.{server_round}.secagg.npz"

    def save_secrets(self, partition: int, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep a round's secure-aggregation secrets (fedq.fl.secagg) until the round's later stages; older ones go."""
        self.drop_secrets(partition)
        if self.folder is None:
            self.secrets[partition, server_round] = dict(arrays)
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy types savez(file, allow_pickle, **arrays)
        atomic_write(self._secret_path(partition, server_round), buffer.getvalue(), durable=False, private=True)

    def load_secrets(self, partition: int, server_round: int) -> dict[str, np.ndarray] | None:
        if self.folder is None:
            return self.secrets.get((partition, server_round))
        try:
            with np.load(self._secret_path(partition, server_round), allow_pickle=False) as saved:
                return {name: saved[name] for name in saved.files}
        except (OSError, ValueError):
            return None

    def drop_secrets(self, partition: int) -> None:
        if self.folder is None:
            for key in [key for key in self.secrets if key[0] == partition]:
                del self.secrets[key]
            return
        for path in self.folder.glob(f"{partition}.*.secagg.npz"):
            if path.name.split(".", 1)[0] == str(partition):
                path.unlink(missing_ok=True)

    def _files(self) -> list[tuple[int, int, str, Path]]:
        if self.folder is None or not self.folder.is_dir():
            return []
        found = []
        for entry in os.scandir(self.folder):
            match = _FILE.match(entry.name)
            if match:
                found.append((int(match[1]), int(match[2]), match[3], Path(entry.path)))
        return found

    def _mine(self, partition: int) -> list[tuple[int, str, Path]]:
        if self.folder is None:
            return []
        found = []
        for path in self.folder.glob(f"{partition}.*.npy"):
            match = _FILE.match(path.name)
            if match and int(match[1]) == partition:
                found.append((int(match[2]), match[3], path))
        return found

    def load(self, partition: int, base_round: int) -> ClientState:
        """The held model of ``base_round`` if the client has it (else the newest it has), and the residual
        saved with that version (else the newest residual)."""
        files = self._mine(partition)
        held = {r: path for r, kind, path in files if kind == "held"}
        residuals = {r: path for r, kind, path in files if kind == "residual"}
        state = ClientState()
        held_round = base_round if base_round in held else max(held, default=None)
        if held_round is not None:
            state.held = _read(held[held_round])
            state.held_round = held_round if state.held is not None else None
        residual_round = base_round if base_round in residuals else max(residuals, default=None)
        if residual_round is not None:
            state.residual = _read(residuals[residual_round])
        return state

    def save(self, partition: int, server_round: int, base_round: int, held: np.ndarray | None,
             residual: np.ndarray | None) -> None:
        """Write this round's version; keep the one it started from (``base_round``), drop older ones."""
        if self.folder is None:
            return
        for kind, array in (("held", held), ("residual", residual)):
            if array is not None:
                atomic_write(self.folder / f"{partition}.{server_round}.{kind}.npy", _bytes(array), durable=False)
        keep_held = {server_round, base_round} if held is not None else set()
        keep_residual = {server_round, base_round} if residual is not None else {base_round}
        for r, kind, path in self._mine(partition):
            if r not in (keep_held if kind == "held" else keep_residual):
                path.unlink(missing_ok=True)

    def drop_held(self, partition: int) -> None:
        """The client may not hold what it was last sent (it dropped out or crashed mid-round)."""
        for _, kind, path in self._mine(partition):
            if kind == "held":
                path.unlink(missing_ok=True)

    def evict(self) -> None:
        """Keep the held models of the ``capacity`` most recently synced clients, as the server does (once after a
        batch of clients: it reads the whole folder)."""
        if self.capacity is None:
            return
        newest: dict[int, int] = {}
        for partition, r, kind, _ in self._files():
            if kind == "held":
                newest[partition] = max(r, newest.get(partition, -1))
        if len(newest) <= self.capacity:
            return
        order = sorted(newest, key=lambda p: (newest[p], p))
        for partition in order[: len(newest) - self.capacity]:
            self.drop_held(partition)


def _bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()


def _read(path: Path) -> np.ndarray | None:
    """A saved array, or None when it is gone or unreadable (the client then holds nothing)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
