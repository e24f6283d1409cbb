"""Writing files so that a crash, an interrupt or a full disk never leaves a half-written one.

Every file fedq writes goes through :func:`atomic_write`: the bytes go to a
temporary file in the same folder, which is renamed over the target only when
complete. A failed write removes its temporary file, and a full disk or a
read-only folder is one :class:`FileWriteError` line naming the folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from fedq.errors import FedqError


class FileWriteError(FedqError):
    """A file could not be written (disk full, no permission, no such folder)."""


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); return the path."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise FileWriteError(describe_write_error(err, path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def describe_write_error(err: OSError, path: Path) -> str:
    """One line for a failed write, naming the folder the user has to fix."""
    folder = path.parent
    if err.errno == errno.ENOSPC:
        return f"disk full: cannot write {path.name} in {folder} (free some space there or choose another folder)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path.name} in {folder}: the folder is read-only or not yours"
    return f"cannot write {path}: {err.strerror or err}"
