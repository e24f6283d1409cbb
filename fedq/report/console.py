"""The console's report of a run: its header, a progress line per round and the summary, as log lines.

It is one reporter of a run's rows beside ``metrics.jsonl`` and the sinks of
``report.sinks`` (``fedq.report.sinks``): the same rows reach each of them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fedq.cli import format_seconds
from fedq.report.run_log import PLOT_FILE, min_median_max_bleu, summarize_traffic
from fedq.report.sinks import Sink

log = logging.getLogger(__name__)


class ConsoleReport(Sink):
    """A progress line per round (with the traffic so far and an ETA) and the run's summary in a few lines."""

    def __init__(self, run_dir: Path, planned: int, rows: list[dict[str, Any]], started: float,
                 devices: str | None) -> None:
        """``rows``: the rows of the rounds before this process (a resumed run), ``started``: when the run began
        (``time.perf_counter``, earlier processes' time included), ``devices``: the fleet of a virtual clock."""
        self.run_dir, self.planned, self.rows, self.started, self.devices = run_dir, planned, list(rows), started, devices

    def round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        elapsed = time.perf_counter() - self.started  # evaluations included
        eta = elapsed / row["round"] * (self.planned - row["round"])
        log.info(progress_line(row, self.rows, self.planned, eta))

    def summary(self, s: dict[str, Any]) -> None:
        log.info(f"\ntraffic over {s['rounds']} rounds: {(s['uplink_bytes'] + s['downlink_bytes']) / 1e6:.2f} MB in all, "
                 f"{format_ratio(s['total_ratio'])} less than fp32 both ways (up {s['uplink_bytes'] / 1e6:.2f} MB, "
                 f"{format_ratio(s['uplink_ratio'])}; "
                 f"down {s['downlink_bytes'] / 1e6:.2f} MB, {format_ratio(s['downlink_ratio'])}; fp32 would be "
                 f"{(s['fp32_uplink_bytes'] + s['fp32_downlink_bytes']) / 1e6:.2f} MB)")
        faults = [f"{n} {why}" for why, n in s["dropped_clients"].items()] + (
            [f"{s['rejected_updates']} rejected updates"] if s["rejected_updates"] else [])
        if faults:
            log.info(f"clients without an update: {', '.join(faults)}")
        if s["sim_seconds"] is not None:
            log.info(f"simulated fleet time ({self.devices}): {format_seconds(s['sim_seconds'])} "
                     f"(this machine: {format_seconds(s['wall_seconds'])})")
        log.info(f"final global model, deployed form: valid BLEU {s['final_valid_bleu']:.2f}, "
                 f"test BLEU {s['final_test_bleu']:.2f} (initial: {s['initial_valid_bleu']:.2f}); {s['bleu_signature']}")
        if "initial_test_bleu" in s:
            log.info(f"test BLEU of the start (init_from): {s['initial_test_bleu']:.2f}")
        if "own_text_bleu" in s:
            log.info("BLEU on each client's held-out pairs, min/median/max over clients: "
                     + "; ".join(f"{when} {min_median_max_bleu(scores)}" for when, scores in s["own_text_bleu"].items()))
        log.info(f"results: {self.run_dir} (metrics.jsonl, summary.json, {PLOT_FILE}, checkpoint/)")


def format_ratio(ratio: float | None) -> str:
    """A compression ratio for a progress line: '15.9x', or '-' where nothing was sent."""
    return f"{ratio:.1f}x" if ratio else "-"


def progress_line(row: dict[str, Any], rows: list[dict[str, Any]], planned: int, eta: float | None = None) -> str:
    """A round's progress line (``rows``: every row up to it, for the total so far)."""
    ratio = format_ratio(row["uplink_ratio"])
    down_ratio = f" ({format_ratio(row['fp32_downlink_bytes'] / row['downlink_bytes'])})" if row["downlink_bytes"] else ""
    total = format_ratio(summarize_traffic(rows)["total_ratio"])
    loss = f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "-"
    bleu = f" | valid BLEU {row['valid_bleu']:.2f}" if row["valid_bleu"] is not None else ""
    missing = ([f"{n} {why}" for why, n in row["dropped"].items()] + ([f"{row['rejected']} rejected"] if row["rejected"] else [])
               + ([f"{row['resynced']} resynced"] if row["resynced"] else []))
    rejected = f" ({', '.join(missing)})" if missing else ""
    sim = f" | sim {format_seconds(row['sim_seconds'])}" if row["sim_seconds"] is not None else ""
    screened = row.get("attackers") and row.get("attackers_admitted") is not None  # rows before the count have none
    admitted = f" | attackers admitted {row['attackers_admitted']}/{row['attackers']}" if screened else ""
    private = f" | ε {row['epsilon']:.3g}" if row.get("epsilon") is not None else ""
    return (f"round {row['round']}/{planned} | {row['clients']} clients{rejected}{admitted} | loss {loss} | "
            f"up {row['uplink_bytes'] / 1e6:.3f} MB ({ratio}) | down {row['downlink_bytes'] / 1e6:.3f} MB{down_ratio} | "
            f"total {total} vs fp32 so far{bleu}{private}{sim} | {row['wall_seconds']:.1f}s"
            + (f" | ETA {format_seconds(eta)}" if eta is not None else ""))
