"""One writer per run folder: an OS lock held for the life of the run, and what counts as a folder that holds a run.

The lock is ``fcntl.flock`` on ``RUN/.fedq.lock``: the kernel releases it when
the process that holds it ends, however it ends (kill -9 included), so a stale
lock cannot exist and nothing has to be cleaned up. The file itself stays; it
only says which process held the folder last. ``fedq.simulate`` takes the lock
before any corpus, tokenizer or Ray work and holds it until its ServerApp has
finished; a ServerApp started without fedq's driver (``flwr run``) takes it
itself (``fedq.fl.run``).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from types import TracebackType

from fedq.errors import FedqError
from fedq.files import describe_write_error

LOCK_FILE = ".fedq.lock"
RUN_FILES = ("metrics.jsonl", "summary.json", "state/state.json")  # any of these: the folder holds a run


class RunFolderBusyError(FedqError):
    """Another process is writing the run folder."""


class RunFolderLock:
    """``with RunFolderLock(folder):`` holds ``folder`` for this process, or raises :class:`RunFolderBusyError`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        path = self.folder / LOCK_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise RunFolderBusyError(describe_write_error(err, path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusyError(
                f"{self.folder} is in use by a running fedq process ({holder}): wait for it to end, or stop it; "
                "a second writer would interleave its rows") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:1] + sys.argv[1:4])}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run's results (rows, a summary or a saved state)."""
    return any((Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size > 0 for name in RUN_FILES)


def refuse_overwrite(folder: Path) -> None:
    """A fresh run into a folder that holds a run would overwrite it: one line saying what to do instead."""
    if holds_run(folder):
        raise RunFolderBusyError(f"{folder} already holds a run: continue or extend it with resume={folder} "
                            "(fl.rounds=N for more rounds), or choose another hydra.run.dir")
