"""Results of a federated run: one JSON row per round, a summary, a plot.

Rows are appended and flushed as each round ends, so a crash loses nothing
that was already measured. A run that stops on an error writes failure.json
(the reason, one line) instead of summary.json.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedq.files import FileWriteError, atomic_write, describe_write_error

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failure.json"
RESERVE_FILE = ".failure-reserve"  # room kept on the run's disk so that failure.json can be written when it is full
RESERVE_BYTES = 64 * 1024
PLOT_FILE = "bleu_vs_uplink.png"


class RunLog:
    """The run's metrics.jsonl; ``keep_rounds`` continues a resumed run after its first rows."""

    def __init__(self, out_dir: str | Path, keep_rounds: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.rows: list[dict[str, Any]] = read_rows(self.out_dir)[:keep_rounds] if keep_rounds is not None else []
        self._rewrite()
        atomic_write(self.out_dir / RESERVE_FILE, bytes(RESERVE_BYTES))

    def _rewrite(self) -> None:
        """metrics.jsonl as ``rows``, atomically."""
        atomic_write(self.out_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in self.rows))

    def amend_last(self, **values: Any) -> None:
        """Change the last row (a resumed run that was extended)."""
        self.rows[-1].update(values)
        self._rewrite()

    def write_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        path = self.out_dir / METRICS_FILE
        try:
            with open(path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise FileWriteError(describe_write_error(err, path)) from None

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = atomic_write(self.out_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        (self.out_dir / RESERVE_FILE).unlink(missing_ok=True)  # a finished run needs no room for a failure
        return path


def write_failure(out_dir: str | Path, reason: str) -> str | None:
    """Write failure.json, in the room the run kept for it on a full disk: how a run tells the process that started
    it why it failed. Returns None, or why failure.json could not be written."""
    (Path(out_dir) / RESERVE_FILE).unlink(missing_ok=True)
    try:
        atomic_write(Path(out_dir) / FAILURE_FILE, json.dumps({"error": reason}, indent=2))
    except FileWriteError as err:
        return str(err)
    return None


def clear_failure(out_dir: str | Path) -> None:
    """A run that starts again (resume=) has no failure until it fails again."""
    (Path(out_dir) / FAILURE_FILE).unlink(missing_ok=True)


def read_failure(out_dir: str | Path) -> str | None:
    path = Path(out_dir) / FAILURE_FILE
    return json.loads(path.read_text())["error"] if path.is_file() else None


def read_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a last line torn by a kill mid-write is dropped."""
    path = Path(out_dir) / METRICS_FILE
    lines = [line for line in (path.read_text().splitlines() if path.is_file() else []) if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
    return rows


def min_median_max_bleu(scores: list[float]) -> str:
    """Per-client BLEU as tables and progress lines show it: ``min/median/max``."""
    return f"{min(scores):.2f}/{statistics.median(scores):.2f}/{max(scores):.2f}"


def summarize_traffic(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the per-round rows; the ratio is fp32 bytes / bytes sent."""
    up = sum(row["uplink_bytes"] for row in rows)
    down = sum(row["downlink_bytes"] for row in rows)
    up32 = sum(row["fp32_uplink_bytes"] for row in rows)
    down32 = sum(row["fp32_downlink_bytes"] for row in rows)
    return {
        "rounds": len(rows),
        "uplink_bytes": up,
        "downlink_bytes": down,
        "fp32_uplink_bytes": up32,
        "fp32_downlink_bytes": down32,
        "uplink_ratio": up32 / up if up else None,
        "downlink_ratio": down32 / down if down else None,
        "total_ratio": (up32 + down32) / (up + down) if up + down else None,
        "secagg_bytes": sum(row.get("secagg_bytes", 0) for row in rows),  # fl.secagg: the protocol's, both ways
        "rejected_updates": sum(row["rejected"] for row in rows),
        "attackers": sum(row.get("attackers", 0) for row in rows),
        "attackers_admitted": _total(row.get("attackers_admitted") for row in rows),
        "honest_removed": _total(row.get("honest_removed") for row in rows),
        "dropped_clients": _sum_counts(row.get("dropped", {}) for row in rows),
        "epsilon": rows[-1].get("epsilon") if rows else None,  # DP: the privacy spent after the last round
        "sim_seconds": sum(row["sim_seconds"] for row in rows) if rows and all(row.get("sim_seconds") is not None for row in rows)
        else None,
    }


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def plot_run(
    rows: list[dict[str, Any]],
    path: str | Path,
    title: str = "",
    initial_bleu: float | None = None,
    final_bleu: float | None = None,
) -> Path:
    """BLEU against cumulative uplink MB (left) and train loss against round (right).

    ``initial_bleu`` is the untrained model's (at 0 MB), ``final_bleu`` the final model's
    (scored after the last round, so not in its row).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cumulative, total = [], 0
    for row in rows:
        total += row["uplink_bytes"]
        cumulative.append(total / 1e6)
    evaluated = [(mb, row["valid_bleu"]) for mb, row in zip(cumulative, rows) if row.get("valid_bleu") is not None]
    if initial_bleu is not None:  # the untrained model, before any byte was sent
        evaluated.insert(0, (0.0, initial_bleu))
    if final_bleu is not None and cumulative:
        evaluated.append((cumulative[-1], final_bleu))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if evaluated:
        left.plot([mb for mb, _ in evaluated], [bleu for _, bleu in evaluated], marker="o")
    left.set_xlabel("cumulative uplink MB")
    left.set_ylabel("valid BLEU (deployed form)")
    left.grid(alpha=0.3)
    right.plot([row["round"] for row in rows], [row["train_loss"] for row in rows], marker=".")
    right.set_xlabel("round")
    right.set_ylabel("train loss (label-smoothed, per token)")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _total(counts: Iterable[int | None]) -> int | None:
    """The sum of a count over rows, None if any row did not count it."""
    values = list(counts)
    known = [value for value in values if value is not None]
    return sum(known) if len(known) == len(values) else None
