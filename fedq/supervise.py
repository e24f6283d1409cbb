"""``python -m fedq.supervise -- COMMAND...``: run a command so that nothing it starts outlives fedq's driver.

fedq starts Flower's processes (the SuperLink, SuperNodes, ``flwr run``) through
this small supervisor. It is a child subreaper (every process below it that loses
its parent, Ray's daemons included, becomes its child rather than init's) and it
receives SIGTERM when the driver dies, however the driver dies (Ctrl-C, SIGTERM,
SIGKILL, the OOM killer, a closed terminal). On SIGTERM, or when the command
exits, it ends the whole subtree: SIGTERM, a grace period, SIGKILL; then it
removes the folders named with ``--remove`` (Flower's temporary home) and exits
with the command's status. Linux only (``prctl``); elsewhere the command runs
plainly.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
GRACE_SECONDS = 8.0


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def end_subtree(root: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process below ``root``, wait up to ``grace`` seconds, SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        tree = descendants(root)
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while tree and time.monotonic() < deadline:
            _reap()
            tree = {pid for pid in tree if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
            time.sleep(0.1)
    _reap()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _reap() -> None:
    """Collect exited children (the orphans this subreaper adopted) so that none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedq.supervise")
    parser.add_argument("--remove", action="append", default=[], help="a folder to remove at the end")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    if os.getppid() != parent:  # the driver died before the death signal was set up
        stopping.append(True)
    child = subprocess.Popen(command) if not stopping else None
    code = 1
    while child is not None:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if stopping:
                break
    end_subtree(os.getpid())
    for folder in args.remove:
        shutil.rmtree(folder, ignore_errors=True)
    return 130 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
