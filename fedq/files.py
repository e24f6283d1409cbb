"""Writing files so that a crash, an interrupt or a full disk never leaves a half-written one.

Every file fedq writes goes through :func:`atomic_write`: the bytes go to a
temporary file in the same folder, which is renamed over the target only when
complete. A failed write removes its temporary file, and a full disk or a
read-only folder is one :class:`FileWriteError` line naming the folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from fedq.errors import FedqError


class FileWriteError(FedqError):
    """A file could not be written (disk full, no permission, no such folder)."""


def atomic_write(path: str | Path, data: bytes | str, durable: bool = True, private: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); return the path. Not ``durable``: no fsync,
    so a killed process still leaves the last complete version but a machine that loses power may leave none (for
    files whose loss is a normal case, such as a simulated client's). ``private``: readable by its owner only (keys)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if not private:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a result file is as readable as any other
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise FileWriteError(describe_write_error(err, path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def format_bytes(size: float) -> str:
    """``1.2 GB``, ``340.5 MB``, ``12.0 kB``, ``0 B``: sizes in messages, readable at any scale."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def free_space(folder: Path) -> str:
    """The free space of the disk that holds ``folder`` (or its nearest existing parent), for a message."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    try:
        return f"{format_bytes(shutil.disk_usage(existing).free)} free"
    except OSError:
        return "free space unknown"


def describe_write_error(err: OSError, path: Path) -> str:
    """One line for a failed write, naming the file, the folder the user has to fix and the space left there."""
    folder = path.parent
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "disk full" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{full}: cannot write {path.name} in {folder} ({free_space(folder)} there; free some space or "
                "choose another folder)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path.name} in {folder}: the folder is read-only or not yours"
    return f"cannot write {path}: {err.strerror or err}"
