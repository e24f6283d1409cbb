"""Scoring the global model and reporting each round: the rows, the progress line, the summary.

:meth:`RoundReporter.end_round` turns a round's :class:`~fedq.fl.rounds.RoundOutcome`
into its row in ``metrics.jsonl`` and its progress line, scoring the global model
every ``fl.eval_every`` rounds (in memory, in its packed deployed form); after the
last round :meth:`RoundReporter.finish` writes the checkpoint, scores its deployed
file once on valid and test, and writes ``summary.json`` and the plot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedq.checkpoint import DEPLOYED, deployed_metadata, save_checkpoint, update_meta
from fedq.config import FedqConfig, config_to_yaml, settings_changed
from fedq.environment import describe_environment
from fedq.fl.federation import Federation
from fedq.fl.personal import personal_scores
from fedq.fl.privacy import dp_delta, dp_enabled, epsilon, noise_multiplier, sampling_rate
from fedq.fl.rounds import RoundOutcome
from fedq.fl.secagg import modulus_bits
from fedq.fl.settings import clients_per_round, clients_sampled
from fedq.fl.state import ServerState, save_state
from fedq.fl.weights import vector_to_model
from fedq.quant import describe_quantization
from fedq.quant.deployed import load_deployed_bytes, pack_deployed
from fedq.report.console import ConsoleReport
from fedq.report.run_log import PLOT_FILE, RunLog, plot_run, summarize_traffic
from fedq.report.sinks import Sink, open_sinks
from fedq.scoring import BleuResult, score_checkpoint, score_model

log = logging.getLogger(__name__)


class GlobalModelScorer:
    """BLEU of the global model in its packed deployed form."""

    def __init__(self, federation: Federation, out_dir: Path) -> None:
        self.federation = federation
        self.out_dir = out_dir

    def valid_bleu(self, vector: np.ndarray) -> BleuResult:
        """Valid BLEU of what the packed file of ``vector`` would hold (packed and loaded back in memory)."""
        return self._deployed(vector, {"valid": self.federation.task.corpus.valid})["valid"]

    def start_and_end(self, initial: np.ndarray, final: np.ndarray) -> dict[str, Any]:
        """What adaptation changed, for a run that starts from ``init_from`` or holds text out of each client
        (``partition.holdout``): the start's test BLEU, and both models' BLEU on the held-out pairs of each client
        that holds any; with ``fl.personal_steps`` also each such client's own fine-tune of the final model."""
        fed = self.federation
        scores: dict[str, Any] = {}
        if fed.cfg.init_from:
            scores["initial_test_bleu"] = self._deployed(initial, {"test": fed.task.corpus.test})["test"].score
        if fed.cfg.partition.holdout:
            train = fed.task.corpus.train
            held = ((c, [train[i] for i in fed.data.held_out(c)]) for c in range(len(fed.data)))
            own = {str(c): pairs for c, pairs in held if pairs}  # a one-pair client holds nothing out
            if own:
                scores["own_text_bleu"] = {when: [r.score for r in self._deployed(vector, own).values()]
                                           for when, vector in (("initial", initial), ("final", final))}
                if fed.cfg.fl.personal_steps:  # the clients' own step after the last round (fedq.fl.personal)
                    scores["own_text_bleu"]["personal"] = personal_scores(
                        fed, final, own, lambda held: self._packed_scores({"own": held})["own"].score)
        return scores

    def _deployed(self, vector: np.ndarray, splits: dict[str, list[tuple[str, str]]]) -> dict[str, BleuResult]:
        vector_to_model(self.federation.model, vector)
        return self._packed_scores(splits)

    def _packed_scores(self, splits: dict[str, list[tuple[str, str]]]) -> dict[str, BleuResult]:
        """BLEU of what the packed file of the federation's model as it is now would hold."""
        fed = self.federation
        data, _ = pack_deployed(fed.model, deployed_metadata(fed.cfg, fed.tokenizer))
        model, _ = load_deployed_bytes(data, "<the global model>", fed.device)
        return score_model(model, fed.tokenizer, splits, fed.cfg.decode, fed.device)

    def final(self, vector: np.ndarray, meta: dict) -> dict:
        """Checkpoint + packed file of the final global model, scored on valid and test."""
        fed = self.federation
        vector_to_model(fed.model, vector)
        folder = self.out_dir.resolve() / "checkpoint"
        save_checkpoint(folder, fed.model, fed.cfg, fed.tokenizer, meta)
        scores = score_checkpoint(folder, fed.task.corpus, fed.cfg.decode, fed.device)
        update_meta(folder, **scores)
        scores["checkpoint"] = str(folder)
        scores["deployed_file"] = str(folder / DEPLOYED)
        return scores


class RoundReporter:
    """Turns each finished round into a metrics.jsonl row for every reporter (the console's progress line, the
    sinks), and the run into a summary."""

    def __init__(self, cfg: FedqConfig, federation: Federation, out_dir: Path, resumed: ServerState | None = None) -> None:
        self.cfg = cfg
        self.federation = federation
        self.scorer = GlobalModelScorer(federation, out_dir)
        self.log = RunLog(out_dir, keep_rounds=resumed.rounds if resumed is not None else None)
        self.out_dir = out_dir
        self.started = time.perf_counter() - (resumed.wall_seconds if resumed is not None else 0.0)
        self.round_started = time.perf_counter()
        self.initial_bleu: float | None = resumed.initial_valid_bleu if resumed is not None else None
        self.config_yaml = config_to_yaml(cfg)
        self.sinks: list[Sink] = [ConsoleReport(out_dir, cfg.fl.rounds, self.log.rows, self.started, cfg.fl.devices),
                                  *open_sinks(cfg.report, out_dir, settings_changed(cfg), self.config_yaml)]
        fl = cfg.fl
        local = f"{fl.local_steps} local steps" if fl.local_epochs <= 0 else f"{fl.local_epochs} local epochs"
        log.info(f"federation: {fl.clients} clients, {clients_per_round(fl)} per round, {fl.rounds} rounds, {local}; "
                 f"{fl.strategy}; uplink {federation.uplink.name} ({federation.uplink.bits_per_value:g} bits/value), "
                 f"downlink {federation.downlink.name}")
        adapters = (f"; rank-{cfg.adapter.rank} adapters on every linear layer over the frozen base of init_from"
                    if cfg.adapter.rank else "")
        log.info(f"model: {federation.numel / 1e6:.2f}M values on the wire; {describe_quantization(federation.model)}{adapters}")
        log.info(f"shards: {federation.data.describe()}")
        self.noise = noise_multiplier(fl) if dp_enabled(fl) else None  # DP's z, for each row's epsilon
        if self.noise is not None:
            where = ("the clients' Skellam shares under secure aggregation (distributed)" if fl.dp.distributed else
                     "the server (central)")
            log.info(f"privacy: DP-FedAvg, updates clipped to {fl.dp.clip:g}, noise multiplier {self.noise:.4g} added by "
                     f"{where}, sampling "
                     f"rate {sampling_rate(fl):.4g}: epsilon {epsilon(fl, fl.rounds, self.noise):.3g} at delta "
                     f"{dp_delta(fl):.3g} after {fl.rounds} rounds (Opacus's RDP accountant)")
        if fl.secagg:
            bits = federation.uplink.bits  # type: ignore[attr-defined]  # fl.secagg runs with the uniform uplink only
            grid = (f"step {fl.secagg_step:g} x fl.dp.clip / sqrt(values)" if fl.dp.clip else
                    f"outer levels at {fl.secagg_step:g} x the clients' median block max |x|")
            codes = f"{bits}-bit codes on the round's shared grid ({grid})"
            if fl.secagg_masks:
                log.info(f"secure aggregation (SecAgg+): the server learns only each round's sum; {codes} summed in "
                         f"{modulus_bits(bits, clients_sampled(fl))} bits a value, masks shared among up to "
                         f"{fl.secagg_neighbours} neighbours per client")
            else:
                log.info(f"secure aggregation's grid without its masks (fl.secagg_masks=false): {codes} sent in the "
                         "clear, the server sees every client's codes")

    def start(self, vector: np.ndarray) -> None:
        """Score the untrained global model (round 0)."""
        bleu = self.scorer.valid_bleu(vector)
        self.initial_bleu = bleu.score
        log.info(f"round 0 (initial global model): valid {bleu}")
        self.round_started = time.perf_counter()

    def score_as_planned(self, resumed: ServerState) -> None:
        """A run extended past its planned last round: that round was left to the final scoring, so its row has no
        valid BLEU; score it now if ``fl.eval_every`` would have, so the rows read as if planned from the start."""
        rows = self.log.rows
        if rows and rows[-1]["round"] == resumed.rounds and rows[-1]["valid_bleu"] is None and self._scored(resumed.rounds):
            self.log.amend_last(valid_bleu=self.scorer.valid_bleu(resumed.vector).score)

    def _scored(self, server_round: int) -> bool:
        """Whether round ``server_round``'s row holds the global model's valid BLEU (the last round's: the summary)."""
        every = self.cfg.fl.eval_every
        return every > 0 and server_round % every == 0 and server_round < self.cfg.fl.rounds

    def save_state(self, rounds: int, vector: np.ndarray, optimizer: dict[str, np.ndarray],
                   held: dict[int, tuple[int, np.ndarray]]) -> None:
        """Everything a resumed run needs after ``rounds`` rounds (see fedq.fl.state)."""
        state = ServerState(rounds, vector, optimizer, held, self.initial_bleu, time.perf_counter() - self.started,
                            self.config_yaml)
        save_state(self.out_dir, state)

    def end_round(self, server_round: int, vector: np.ndarray, traffic: RoundOutcome) -> dict[str, Any]:
        """The round's row; the global model is scored every ``fl.eval_every`` rounds (the last by ``finish``)."""
        now = time.perf_counter()
        round_seconds = now - self.round_started
        valid_bleu = self.scorer.valid_bleu(vector).score if self._scored(server_round) else None
        row = {
            "round": server_round,
            "sampled": traffic.sampled,
            "clients": traffic.clients,
            "dropped": traffic.dropped,
            "rejected": traffic.rejected,
            "rejections": traffic.rejections,
            "failures": traffic.failures,
            "resynced": traffic.resynced,
            "attackers": traffic.attackers,
            "attackers_admitted": traffic.attackers_admitted,
            "honest_removed": traffic.honest_removed,
            "train_loss": traffic.train_loss,
            "uplink_bytes": traffic.uplink_bytes,
            "downlink_bytes": traffic.downlink_bytes,
            "fp32_uplink_bytes": traffic.fp32_uplink_bytes,
            "fp32_downlink_bytes": traffic.fp32_downlink_bytes,
            "uplink_ratio": traffic.fp32_uplink_bytes / traffic.uplink_bytes if traffic.uplink_bytes else None,
            "valid_bleu": valid_bleu,
            "sim_seconds": traffic.sim_seconds,
            "wall_seconds": round_seconds,
            "eval_seconds": time.perf_counter() - now,
            "client_train_seconds": traffic.client_train_seconds,
            "client_encode_seconds": traffic.client_encode_seconds,
            "server_decode_seconds": traffic.server_decode_seconds,
            "server_train_seconds": traffic.server_train_seconds,
            "secagg_bytes": traffic.secagg_bytes,
            "stage_seconds": traffic.stage_seconds,
            "epsilon": epsilon(self.cfg.fl, server_round, self.noise) if self.noise is not None else None,
            "clip_norm": traffic.clip_norm or None,
        }
        self.log.write_round(row)
        for sink in self.sinks:
            sink.round(row)
        self.round_started = time.perf_counter()
        return row

    def finish(self, vector: np.ndarray) -> dict[str, Any]:
        """Checkpoint and score the final global model once; write summary.json and the plot."""
        changed = self.scorer.start_and_end(self.federation.initial_vector(), vector)
        final = self.scorer.final(vector, {"rounds": len(self.log.rows)})
        summary = {
            "run_dir": str(self.out_dir.resolve()),
            **summarize_traffic(self.log.rows),
            "train_loss_final": self.log.rows[-1]["train_loss"] if self.log.rows else None,
            "initial_valid_bleu": self.initial_bleu,
            "final_valid_bleu": final["valid_bleu"],
            "final_test_bleu": final["test_bleu"],
            "bleu_signature": final["bleu_signature"],
            "deployed_size": final["deployed_size"],
            "checkpoint": final["checkpoint"],
            "deployed_file": final["deployed_file"],
            **changed,
            "wall_seconds": time.perf_counter() - self.started,
            "environment": describe_environment(self.cfg),
            "config": self.config_yaml,
        }
        self.log.write_summary(summary)
        plot_run(
            self.log.rows,
            self.out_dir / PLOT_FILE,
            title=f"fedq: {describe_quantization(self.federation.model)}; uplink {self.cfg.comm.uplink.name}",
            initial_bleu=summary["initial_valid_bleu"],
            final_bleu=summary["final_valid_bleu"],
        )
        for sink in self.sinks:
            sink.summary(summary)
            sink.close()
        return summary
