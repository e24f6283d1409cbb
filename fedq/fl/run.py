"""A whole federated run without Flower: start or resume, the rounds, the run state, the final scoring.

``server/server_app.py`` calls :func:`run_federation` with Flower's grid behind
``exchange`` and Flower's strategy behind ``aggregator``; a one-process run (the
simulation-overhead benchmark's baseline, tests) passes plain calls instead and
runs exactly the same round code.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from fedq.config import FedqConfig
from fedq.fl.buffered import BufferedCoordinator
from fedq.fl.federation import Federation
from fedq.fl.reporting import RoundReporter
from fedq.fl.rounds import Aggregator, Coordinator, Exchange
from fedq.fl.state import load_state
from fedq.report.run_log import SUMMARY_FILE, clear_failure
from fedq.run_folder import RunFolderLock, refuse_overwrite
from fedq.task import configure_threads

log = logging.getLogger(__name__)


def run_federation(cfg: FedqConfig, out_dir: Path, exchange: Exchange, aggregator: Aggregator,
                   resume: bool = False, federation: Federation | None = None, folder_held: bool = False) -> dict:
    """Run (or continue, after its last saved round) the rounds of ``cfg``; returns the summary. ``out_dir`` is held
    for the run (``fedq.run_folder``) unless the caller holds it (``folder_held``: fedq.simulate's driver does)."""
    with nullcontext() if folder_held else RunFolderLock(out_dir):
        if not resume:
            refuse_overwrite(out_dir)
        return _run_rounds(cfg, out_dir, exchange, aggregator, resume, federation)


def _run_rounds(cfg: FedqConfig, out_dir: Path, exchange: Exchange, aggregator: Aggregator, resume: bool,
                federation: Federation | None) -> dict:
    log.info(f"results in {out_dir}")
    configure_threads(cfg.threads)
    federation = federation or Federation(cfg)
    federation.check_deadline()
    coordinator = (BufferedCoordinator if cfg.fl.mode == "async" else Coordinator)(federation, aggregator)
    state = load_state(out_dir) if resume else None
    clear_failure(out_dir)
    reporter = RoundReporter(cfg, federation, out_dir, state)
    if state is not None:
        if state.rounds < cfg.fl.rounds:
            (out_dir / SUMMARY_FILE).unlink(missing_ok=True)  # an extended run is not finished until its new last round
        reporter.score_as_planned(state)
        vector = state.vector
        coordinator.restore_state_arrays(state.optimizer)
        coordinator.broadcaster.held.update(state.held)
        log.info(f"resuming after round {state.rounds} of {cfg.fl.rounds} from {out_dir}")
        if cfg.fl.mode == "async":
            log.info("note: the clients that were training when the run stopped are not saved; new ones are dispatched")
        if cfg.fl.checkpoint_every > 1:
            log.info(f"note: rounds are saved every {cfg.fl.checkpoint_every}; a client synced after round {state.rounds} "
                     "may no longer hold what the server saved for it and is resynced (counted in the rows)")
    else:
        vector = federation.initial_vector()
        reporter.start(vector)
    for server_round in range((state.rounds if state else 0) + 1, cfg.fl.rounds + 1):
        vector, outcome = coordinator.run_round(server_round, vector, exchange)
        reporter.end_round(server_round, vector, outcome)
        if server_round % cfg.fl.checkpoint_every == 0 or server_round == cfg.fl.rounds:
            reporter.save_state(server_round, vector, coordinator.state_arrays(), dict(coordinator.broadcaster.held))
    return reporter.finish(vector)
