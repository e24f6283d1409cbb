"""Server-side work of a federated run that does not touch Flower: scoring and reporting."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedq.checkpoint import DEPLOYED, save_checkpoint, update_meta
from fedq.cli import format_seconds
from fedq.compose import config_to_yaml
from fedq.config import FedqConfig
from fedq.deployment import pack_model, score_deployed, score_file
from fedq.evaluation import BleuResult
from fedq.federated import Federation, clients_per_round, float_state_names, vector_to_model
from fedq.quant import describe_quantization
from fedq.report.run_log import PLOT_FILE, RunLog, plot_run, summarize_traffic


@dataclass
class RoundTraffic:
    """What one round cost on the wire, and what the clients reported."""

    clients: int = 0
    rejected: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    fp32_uplink_bytes: int = 0
    fp32_downlink_bytes: int = 0
    train_loss: float | None = None
    client_train_seconds: float = 0.0
    client_encode_seconds: float = 0.0
    server_decode_seconds: float = 0.0
    rejections: list[str] = field(default_factory=list)


class GlobalModelScorer:
    """BLEU of the global model in its packed deployed form."""

    def __init__(self, federation: Federation, out_dir: Path) -> None:
        self.federation = federation
        self.out_dir = out_dir

    def valid_bleu(self, vector: np.ndarray) -> BleuResult:
        fed = self.federation
        vector_to_model(fed.model, vector)
        path = self.out_dir / "global.fedq"
        pack_model(fed.model, path, fed.cfg, fed.task.tokenizer)
        return score_file(path, fed.task.tokenizer, {"valid": fed.task.corpus.valid}, fed.cfg, fed.device)["valid"]

    def final(self, vector: np.ndarray, meta: dict) -> dict:
        """Checkpoint + packed file of the final global model, scored on valid and test."""
        fed = self.federation
        vector_to_model(fed.model, vector)
        folder = self.out_dir / "checkpoint"
        save_checkpoint(folder, fed.model, fed.cfg, fed.task.tokenizer, meta)
        scores = score_deployed(fed.model, folder, fed.task.tokenizer, fed.task.corpus, fed.cfg, fed.device)
        update_meta(folder, **scores)
        scores["checkpoint"] = str(folder)
        scores["deployed_file"] = str(folder / DEPLOYED)
        return scores


class RoundReporter:
    """Turns each finished round into a metrics.jsonl row and a progress line."""

    def __init__(self, cfg: FedqConfig, federation: Federation, scorer: GlobalModelScorer, out_dir: Path) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.log = RunLog(out_dir)
        self.out_dir = out_dir
        self.state_names = float_state_names(federation.model)
        self.started = time.perf_counter()
        self.round_started = self.started
        self.initial_bleu: BleuResult | None = None
        self.final_scores: dict | None = None
        self.final_vector: np.ndarray | None = None
        n_params = federation.numel
        print(
            f"federation: {cfg.fl.clients} clients, {clients_per_round(cfg)} per round, {cfg.fl.rounds} rounds, "
            f"{cfg.fl.local_steps if cfg.fl.local_epochs <= 0 else str(cfg.fl.local_epochs) + ' epochs of'} local steps; "
            f"{cfg.fl.strategy}; uplink {federation.uplink.name} ({federation.uplink.bits_per_value:g} bits/value), "
            f"downlink {federation.downlink.name}",
            flush=True,
        )
        print(f"model: {n_params / 1e6:.2f}M values on the wire; {describe_quantization(federation.model)}", flush=True)
        print(f"shards: {federation.describe_shards()}", flush=True)

    def _should_score(self, server_round: int) -> bool:
        every = self.cfg.fl.eval_every
        return every > 0 and server_round % every == 0

    def end_round(self, server_round: int, vector: np.ndarray, traffic: RoundTraffic) -> dict[str, Any]:
        now = time.perf_counter()
        round_seconds = now - self.round_started
        if server_round == 0:
            self.initial_bleu = self.scorer.valid_bleu(vector)
            print(f"round 0 (untrained global model): valid {self.initial_bleu}", flush=True)
            self.round_started = time.perf_counter()
            return {"round": 0, "valid_bleu": self.initial_bleu.score}
        valid_bleu = None
        if server_round == self.cfg.fl.rounds:
            self.final_vector = vector
            self.final_scores = self.scorer.final(vector, {"rounds": server_round})
            valid_bleu = self.final_scores["valid_bleu"]
        elif self._should_score(server_round):
            valid_bleu = self.scorer.valid_bleu(vector).score
        row = {
            "round": server_round,
            "clients": traffic.clients,
            "rejected": traffic.rejected,
            "rejections": traffic.rejections,
            "train_loss": traffic.train_loss,
            "uplink_bytes": traffic.uplink_bytes,
            "downlink_bytes": traffic.downlink_bytes,
            "fp32_uplink_bytes": traffic.fp32_uplink_bytes,
            "fp32_downlink_bytes": traffic.fp32_downlink_bytes,
            "uplink_ratio": traffic.fp32_uplink_bytes / traffic.uplink_bytes if traffic.uplink_bytes else None,
            "valid_bleu": valid_bleu,
            "wall_seconds": round_seconds,
            "eval_seconds": time.perf_counter() - now,
            "client_train_seconds": traffic.client_train_seconds,
            "client_encode_seconds": traffic.client_encode_seconds,
            "server_decode_seconds": traffic.server_decode_seconds,
        }
        self.log.write_round(row)
        self._print_row(row)
        self.round_started = time.perf_counter()
        return row

    def _print_row(self, row: dict[str, Any]) -> None:
        ratio = f"{row['uplink_ratio']:.1f}x" if row["uplink_ratio"] else "-"
        loss = f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "-"
        bleu = f" | valid BLEU {row['valid_bleu']:.2f}" if row["valid_bleu"] is not None else ""
        rejected = f" ({row['rejected']} rejected)" if row["rejected"] else ""
        elapsed = time.perf_counter() - self.started
        eta = elapsed / row["round"] * (self.cfg.fl.rounds - row["round"])
        print(
            f"round {row['round']}/{self.cfg.fl.rounds} | {row['clients']} clients{rejected} | loss {loss} | "
            f"up {row['uplink_bytes'] / 1e6:.3f} MB ({ratio} vs fp32) | down {row['downlink_bytes'] / 1e6:.3f} MB"
            f"{bleu} | {row['wall_seconds']:.1f}s | ETA {format_seconds(eta)}",
            flush=True,
        )

    def finish(self, vector: np.ndarray) -> dict[str, Any]:
        if self.final_scores is None or self.final_vector is None or not np.array_equal(vector, self.final_vector):
            self.final_scores = self.scorer.final(vector, {"rounds": len(self.log.rows)})
        traffic = summarize_traffic(self.log.rows)
        summary = {
            **traffic,
            "train_loss_final": self.log.rows[-1]["train_loss"] if self.log.rows else None,
            "initial_valid_bleu": self.initial_bleu.score if self.initial_bleu else None,
            "final_valid_bleu": self.final_scores["valid_bleu"],
            "final_test_bleu": self.final_scores["test_bleu"],
            "bleu_signature": self.final_scores["bleu_signature"],
            "deployed_size": self.final_scores["deployed_size"],
            "checkpoint": self.final_scores["checkpoint"],
            "deployed_file": self.final_scores["deployed_file"],
            "wall_seconds": time.perf_counter() - self.started,
            "config": config_to_yaml(self.cfg),
        }
        self.log.write_summary(summary)
        plot_run(
            self.log.rows,
            self.out_dir / PLOT_FILE,
            title=f"fedq: {describe_quantization(self.scorer.federation.model)}; uplink {self.cfg.comm.uplink.name}",
            initial_bleu=summary["initial_valid_bleu"],
        )
        self._print_summary(summary)
        return summary

    def _print_summary(self, s: dict[str, Any]) -> None:
        print(
            f"\ntraffic over {s['rounds']} rounds: up {s['uplink_bytes'] / 1e6:.2f} MB, down {s['downlink_bytes'] / 1e6:.2f} MB "
            f"(fp32 would be {s['fp32_uplink_bytes'] / 1e6:.2f} / {s['fp32_downlink_bytes'] / 1e6:.2f} MB: "
            f"uplink {s['uplink_ratio']:.1f}x, total {s['total_ratio']:.1f}x smaller)",
            flush=True,
        )
        print(
            f"final global model, deployed form: valid BLEU {s['final_valid_bleu']:.2f}, test BLEU {s['final_test_bleu']:.2f} "
            f"(untrained: {s['initial_valid_bleu']:.2f}); {s['bleu_signature']}",
            flush=True,
        )
        print(f"results: {self.out_dir} (metrics.jsonl, summary.json, {PLOT_FILE}, checkpoint/)", flush=True)

