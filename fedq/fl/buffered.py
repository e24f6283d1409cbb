"""Asynchronous buffered aggregation on the virtual clock (FedBuff, Nguyen et al., 2022): late work still counts.

``fl.mode=async`` keeps ``fl.concurrency`` clients training at once. Each round,
the clients that arrived are replaced by new ones (sampled among the clients
online and not already training), which train from the current global model;
then the round takes the next ``fl.buffer_size`` arrivals in the order of the
virtual clock (``fl.devices``: a slow board arrives later, but it arrives) and
applies them: every update scaled by 1/sqrt(1 + staleness), staleness being
the rounds since the model the client trained from, then the defence and
Flower's strategy as in a synchronous round. An update staler than
``fl.max_staleness`` is discarded (counted, its bytes too). A round's
simulated time is how far the clock moved to its last arrival.

Bytes are counted when they are sent: a client's downlink in the round that
dispatches it, its uplink in the round it arrives in. The clients still in
flight when a run stops are not saved; a resumed run dispatches new ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedq.comm import payload_bytes
from fedq.fl import protocol
from fedq.fl.protocol import Reply
from fedq.fl.rounds import Coordinator, Exchange, RoundOutcome
from fedq.fl.settings import buffer_size, concurrency


@dataclass
class InFlight:
    reply: Reply
    started: int  # the round whose model the client trains from (its version)
    arrives: float  # on the virtual clock


class BufferedCoordinator(Coordinator):
    """The asynchronous server: the same sampling, downlink, checks, defences and strategy as a round."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.in_flight: list[InFlight] = []
        self.clock = 0.0

    def run_round(self, server_round: int, vector: np.ndarray, exchange: Exchange) -> tuple[np.ndarray, RoundOutcome]:
        fl = self.cfg.fl
        outcome = RoundOutcome(clip_norm=self.aggregator.clip_norm)
        self.dispatch(server_round, vector, exchange, outcome)
        self.in_flight.sort(key=lambda f: (f.arrives, f.reply.partition))
        buffer, self.in_flight = self.in_flight[: buffer_size(fl)], self.in_flight[buffer_size(fl) :]
        started_at = self.clock
        if buffer:
            self.clock = max(self.clock, buffer[-1].arrives)
        fresh = []
        for arrival in buffer:
            staleness = server_round - 1 - arrival.started
            if staleness > fl.max_staleness:
                outcome.dropped[protocol.STALE] = outcome.dropped.get(protocol.STALE, 0) + 1
                outcome.failures.append(f"client {arrival.reply.partition}: {protocol.STALE} ({staleness} rounds)")
                outcome.uplink_bytes += payload_bytes(arrival.reply.reply.arrays)  # type: ignore[union-attr]
                outcome.fp32_uplink_bytes += vector.nbytes
            else:
                fresh.append(arrival)
        replies = self.collude(server_round, [arrival.reply for arrival in fresh])
        ages = {a.reply.partition: server_round - 1 - a.started for a in fresh}
        admitted = self.admission.admit(replies, vector, self.center, outcome, waits_for_missing=False)
        outcome.sim_seconds = self.clock - started_at
        if len(admitted) < fl.min_replies:
            raise self._failure(server_round, replies, outcome)
        scaled = [a.update / np.float32(math.sqrt(1 + ages[a.partition])) for a in admitted]
        return self.step(server_round, vector, admitted, scaled, outcome), outcome

    def dispatch(self, server_round: int, vector: np.ndarray, exchange: Exchange, outcome: RoundOutcome) -> None:
        """Bring the clients in flight back to ``fl.concurrency``: new clients, online in this round, start now."""
        self.refresh_reachable(exchange)
        busy = {f.reply.partition for f in self.in_flight}
        chosen = self.sample(server_round, concurrency(self.cfg.fl) - len(self.in_flight), busy)
        if not chosen:
            return
        outcome.sampled = len(chosen)
        outcome.fp32_downlink_bytes += len(chosen) * vector.nbytes
        for reply in self.send(server_round, vector, chosen, exchange, outcome):
            if reply.reply is None:  # a dropout never arrives; a crash comes back at once: neither is waited for
                outcome.dropped[reply.reason] = outcome.dropped.get(reply.reason, 0) + 1
                outcome.failures.append(reply.describe())
                continue
            seconds = float(reply.reply.metrics.get(protocol.SIM_SECONDS, 0.0))
            self.in_flight.append(InFlight(reply, server_round - 1, self.clock + seconds))
