"""The server's round without Flower: sample, send, admit or reject each reply with its reason, aggregate, step.

A reader follows one round in :meth:`Coordinator.run_round`:

1. **sample** the round's clients: ``fl.clients_per_round`` of the clients online
   this round (``fedq.fl.faults``), drawn with a (seed, round) generator;
2. **send** each one a :class:`~fedq.fl.protocol.TrainRequest` whose downlink is a
   delta against what the client holds (``fedq.comm.downlink``), through an
   ``exchange`` that delivers requests and collects replies (Flower's grid in
   ``server/``, or plain calls in one process); a client that does not hold what
   its delta builds on asks for a resync and is sent a delta against the seeded
   model in the same round, both messages counted;
3. **admit** each reply or reject it with its reason: a client that failed or went
   offline, an update that comes from another vocabulary, arrives past the
   deadline on the virtual clock, does not decode, or is too large
   (``fl.max_update_norm``, ``fl.max_update_norm_ratio`` x the round's median);
4. **aggregate** the admitted updates with the aggregator (Flower's strategy in
   ``server/``) and **step**: ``global += fl.server_lr x (aggregate - global)``.

With ``fl.secagg`` step 2's replies carry public keys instead of updates, and
three more exchanges with the admitted clients (``fedq.fl.secagg``) give the
server the sum of their updates only; their mean is the one update aggregated.

Replies are taken in partition order, so a rerun, or a resumed run, adds the same
numbers in the same order and ends with the same weights. Every byte counted is
the size of an array sent, per client, in both directions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedq.comm import CodecError, UpdateCodec, payload_bytes
from fedq.comm.codecs import ServerUpdate
from fedq.comm.downlink import Broadcaster, cache_capacity
from fedq.errors import FedqError
from fedq.fl import protocol
from fedq.fl.defences import DEFENCES, RoundView
from fedq.fl.faults import Faults
from fedq.fl.federation import Federation
from fedq.fl.partial import fill_from_senders
from fedq.fl.privacy import noise_multiplier
from fedq.fl.protocol import Reply, TrainRequest
from fedq.fl.root import RootTrainer
from fedq.fl.secagg import MASKED, Exchanger, Grid, SecureSum, StageMessage, public_keys_of, scale_blocks
from fedq.fl.settings import FLConfig, clients_per_round, clients_sampled
from fedq.fl.strategies import STRATEGIES

log = logging.getLogger(__name__)

CENTER = "cclip_center"  # the run state's name of the last round's step (kept for cclip and mask)
# A round's stages in its row's stage_seconds: the server encoding the downlinks; the exchange (delivering requests and
# collecting replies: the clients' work and the transport); the clients' whole rounds and their training, summed over
# the clients that replied (however many ran at once); the server's decoding and checks; its defence and aggregation;
# with fl.secagg only, the secure stages after the train request (grid, shares, masked codes, unmasking)
STAGES = ("downlink", "exchange", "clients", "clients_train", "decode", "aggregate", "secagg")


class Exchange(Protocol):
    """Delivers a round's requests and collects their replies (Flower's grid in ``server/``, or plain calls)."""

    def __call__(self, requests: Sequence[TrainRequest]) -> list[Reply]: ...

    def back_online(self, partitions: set[int]) -> set[int]:
        """Of the clients found unreachable, those that can be reached again."""
        ...


class Aggregator(Protocol):
    """Turns the admitted updates of a round into the aggregate model (Flower's strategies in ``server/``)."""

    steps_itself: bool  # True: the aggregate is already the server's step (FedAdam), fl.server_lr is not applied

    @property
    def clip_norm(self) -> float:
        """fl.dp: the norm clients clip their updates to this round (0: none)."""
        ...

    def __call__(self, server_round: int, global_vector: np.ndarray, updates: list[np.ndarray],
                 weights: list[float]) -> np.ndarray: ...

    def adapt_clipping(self, server_round: int, unclipped: list[bool]) -> None:
        """fl.dp adaptive clipping: the next round's norm, from which of this round's updates were within it."""
        ...

    def state_arrays(self) -> dict[str, np.ndarray]: ...

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None: ...


class RoundFailedError(FedqError):
    """No client of a round delivered a usable update."""


class FederationMismatchError(FedqError):
    """The nodes that connected are not the federation the config describes."""


def too_few_nodes(expected: int, connected: int, waited: float) -> FederationMismatchError:
    return FederationMismatchError(
        f"waited {waited:g}s for {expected} nodes but {connected} connected: set clients={connected} (run config "
        "num-clients), or start more SuperNodes / raise num-supernodes, or raise fl.node_wait_seconds")


def nodes_by_partition(answers: dict[int, int | str], clients: int) -> dict[int, int]:
    """{partition: node id} from each node's answer to the query ({node id: its partition, or why it has none})."""
    for node, answer in answers.items():
        if isinstance(answer, str):
            raise FederationMismatchError(f"node {node} did not say its partition: {answer}")
    partitions = {int(answer): node for node, answer in answers.items()}
    if sorted(partitions) != list(range(clients)):
        raise FederationMismatchError(f"the nodes hold partitions {sorted(partitions)[:10]}, expected 0..{clients - 1} "
                                      "(each node needs a distinct --node-config partition-id below num-partitions)")
    return partitions


@dataclass
class RoundOutcome:
    """What one round cost on the wire, what the clients reported, and who delivered nothing and why."""

    sampled: int = 0
    clients: int = 0  # admitted updates
    dropped: dict[str, int] = field(default_factory=dict)  # clients without an update, by reason (dropout, crashed)
    rejected: int = 0
    resynced: int = 0  # clients that did not hold what their delta built on and were sent a second message
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    fp32_uplink_bytes: int = 0
    fp32_downlink_bytes: int = 0
    train_loss: float | None = None
    client_train_seconds: float = 0.0  # the slowest admitted client's (the round waits for it)
    client_encode_seconds: float = 0.0
    server_decode_seconds: float = 0.0
    server_train_seconds: float = 0.0  # the server's own training on its root set (fl.defence=fltrust)
    secagg_bytes: int = 0  # fl.secagg: the protocol's bytes besides the masked updates (keys, shares, grid), both ways
    clip_norm: float = 0.0  # fl.dp: the norm the round's clients clipped to (0: none)
    sim_seconds: float | None = None  # the virtual clock of the round (with fl.devices)
    # Where the round's wall time went, by stage (see STAGES); the clients' stages are sums over the round's clients
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # each client that delivered nothing, and why
    # The defence's screening (fl.attack): attackers' updates that reached it, how many of them it kept, how many
    # honest updates it removed; None where it transforms the updates rather than choosing or weighing them (nnm, cclip)
    attackers: int = 0
    attackers_admitted: int | None = None
    honest_removed: int | None = None


@dataclass
class _Admitted:
    partition: int
    update: np.ndarray
    norm: float
    metrics: dict[str, float]
    sent: np.ndarray | None  # which values the client sent (mask); None: all


class Admission:
    """The checks every reply goes through before it may reach the global model (step 3 above)."""

    def __init__(self, fl: FLConfig, uplink: UpdateCodec, fingerprint: int, faults: Faults) -> None:
        self.fl = fl
        self.uplink = uplink
        self.fingerprint = fingerprint
        self.faults = faults

    def admit(self, replies: Sequence[Reply], vector: np.ndarray, reference: np.ndarray, outcome: RoundOutcome,
              waits_for_missing: bool = True) -> list[_Admitted]:
        """Decode and check every reply (see the module docstring); fill ``outcome``'s counts and clock
        (``reference``: the server's last step, which fills what a ``mask`` payload did not send;
        ``waits_for_missing``: the server waits for a client that never replies, until the deadline)."""
        fl = self.fl
        decoded: list[_Admitted] = []
        waited = [0.0]  # virtual clock: until when the server waited for each client
        start = time.perf_counter()
        for reply in sorted(replies, key=lambda r: r.partition):
            if reply.reply is None:
                outcome.dropped[reply.reason] = outcome.dropped.get(reply.reason, 0) + 1
                outcome.failures.append(reply.describe())
                if reply.reason == protocol.WORKER_DIED:
                    log.warning(f"{reply.describe()}; Flower does not replace a worker that died, so the clients "
                                "sent to it fail too (stop and resume= to start fresh workers)")
                if reply.reason == protocol.DROPOUT and waits_for_missing:  # no reply comes: it waits until the deadline
                    waited.append(self.faults.waited(None))
                continue
            metrics = reply.reply.metrics
            for stage, key in (("clients", protocol.ROUND_SECONDS), ("clients_train", protocol.TRAIN_SECONDS)):
                outcome.stage_seconds[stage] = outcome.stage_seconds.get(stage, 0.0) + float(metrics.get(key, 0.0))
            outcome.uplink_bytes += payload_bytes(reply.reply.arrays)
            outcome.fp32_uplink_bytes += vector.nbytes
            clock = float(metrics.get(protocol.SIM_SECONDS, 0.0))
            waited.append(self.faults.waited(clock))
            reason, update = self._check(reply, reference)
            if reason is not None:
                self._reject(reply.partition, reason, outcome)
                continue
            assert update is not None  # _check decodes every update it does not refuse
            decoded.append(_Admitted(reply.partition, update.values, float(np.linalg.norm(update.values)), metrics, update.sent))
        admitted = decoded
        if fl.max_update_norm_ratio and decoded:
            median = float(np.median([a.norm for a in decoded]))
            admitted = []
            for a in decoded:
                if a.norm > fl.max_update_norm_ratio * median:
                    self._reject(a.partition, f"update norm {a.norm:.3g} is above fl.max_update_norm_ratio="
                                 f"{fl.max_update_norm_ratio:g} x the round's median {median:.3g}", outcome)
                else:
                    admitted.append(a)
        outcome.server_decode_seconds = outcome.stage_seconds["decode"] = time.perf_counter() - start
        outcome.clients = len(admitted)
        if self.faults.has_clock:
            outcome.sim_seconds = max(waited)
        if admitted:
            tokens = [a.metrics[protocol.NUM_TOKENS] for a in admitted]
            losses = sum(a.metrics[protocol.TRAIN_LOSS] * w for a, w in zip(admitted, tokens))
            outcome.train_loss = losses / max(sum(tokens), 1e-12)
            outcome.client_train_seconds = max(a.metrics.get(protocol.TRAIN_SECONDS, 0.0) for a in admitted)
            outcome.client_encode_seconds = max(a.metrics.get(protocol.ENCODE_SECONDS, 0.0) for a in admitted)
        return admitted

    def _check(self, reply: Reply, reference: np.ndarray) -> tuple[str | None, ServerUpdate | None]:
        """(why the update is refused or None, the decoded update when it was decoded)."""
        metrics, arrays = reply.reply.metrics, reply.reply.arrays  # type: ignore[union-attr]
        fingerprint = metrics.get(protocol.FINGERPRINT)
        if fingerprint != self.fingerprint:
            theirs = f"{int(fingerprint):015x}" if fingerprint is not None else "none"
            return (f"its tokenizer (fingerprint {theirs}) is not the server's ({self.fingerprint:015x}); "
                    "every node must build the same vocabulary (same data.* settings and corpus files)"), None
        late = self.faults.late(float(metrics.get(protocol.SIM_SECONDS, 0.0)))
        if late is not None:
            return late, None
        if self.fl.secagg:  # its public keys (fedq.fl.secagg): the update itself never comes
            try:
                public_keys_of(arrays, scale_blocks(reference.size, self.uplink.block_size, self.fl.dp.clip > 0))  # type: ignore[attr-defined]
            except FedqError as err:
                return str(err), None
            return None, ServerUpdate(np.zeros(0, np.float32), None)
        try:
            update = self.uplink.decode_update(arrays, reference.size, reference)
        except CodecError as err:
            return str(err), None
        max_norm = self.fl.max_update_norm
        norm = float(np.linalg.norm(update.values))
        if max_norm and norm > max_norm:
            return f"update norm {norm:.3g} is above fl.max_update_norm={max_norm:g}", update
        return None, update

    @staticmethod
    def _reject(partition: int, reason: str, outcome: RoundOutcome) -> None:
        outcome.rejected += 1
        outcome.rejections.append(f"client {partition}: {reason}")
        log.info(f"rejected the update of client {partition}: {reason}")


class Coordinator:
    """The server's side of every round of one run."""

    def __init__(self, federation: Federation, aggregator: Aggregator) -> None:
        cfg = federation.cfg
        self.federation = federation
        self.cfg = cfg
        self.aggregator = aggregator
        self.faults = federation.faults
        self.admission = Admission(cfg.fl, federation.uplink, protocol.fingerprint_number(federation.tokenizer.fingerprint),
                                   federation.faults)
        capacity = cache_capacity(cfg.comm.downlink.cache_mb, federation.numel)
        self.broadcaster = Broadcaster(federation.downlink, federation.seeded, capacity)
        self.server_lr = 1.0 if aggregator.steps_itself else cfg.fl.server_lr
        # the last round's step: centered clipping clips around it, and it fills what a mask payload did not send
        self.center = np.zeros(federation.numel, np.float32)
        self.defence = DEFENCES.make(cfg.fl.defence)
        strategy = STRATEGIES.make(cfg.fl.strategy)
        # what a defence filters out never reaches the model; with no defence, the strategy's own choice is not counted
        # where it takes a median or selects (what reaches the model there is not one client's update)
        self.counts_screening = self.defence.name != "none" or not (strategy.coordinate_wise or strategy.chooses)
        self.keeps_center = self.defence.uses_last_step or federation.uplink.reads_reference
        self.root = RootTrainer(federation) if self.defence.uses_root else None
        self.unreachable: set[int] = set()  # clients whose node stopped answering, until it is seen again

    def candidates(self, server_round: int, busy: Iterable[int] = ()) -> np.ndarray:
        """The clients a round may sample: online (with a fleet), not found unreachable, not ``busy``."""
        online = self.faults.online(server_round)
        population = np.arange(self.cfg.fl.clients) if online is None else online
        excluded = self.unreachable.union(busy)
        return np.setdiff1d(population, np.fromiter(excluded, int, len(excluded))) if excluded else population

    def sample(self, server_round: int, size: int | None = None, busy: Iterable[int] = ()) -> list[int]:
        """This round's clients (``size``, default the round's requests, or all candidates if fewer): partition
        ids drawn from :meth:`candidates` with a (seed, round) generator, sorted."""
        population = self.candidates(server_round, busy)
        size = min(clients_sampled(self.cfg.fl) if size is None else size, len(population))
        if size <= 0:
            return []
        rng = np.random.default_rng([self.cfg.seed, server_round])
        return sorted(int(p) for p in rng.choice(population, size=size, replace=False))

    def refresh_reachable(self, exchange: Exchange) -> None:
        """Clients found unreachable whose node is seen again may be sampled again."""
        if self.unreachable:
            back = exchange.back_online(set(self.unreachable))
            for partition in sorted(back):
                log.info(f"client {partition} is reachable again")
            self.unreachable -= back

    def request(self, partition: int, server_round: int, vector: np.ndarray, slot: int, slots: int) -> TrainRequest:
        downlink = self.broadcaster.message_for(partition, vector, server_round)
        return TrainRequest(partition, server_round, downlink, self.broadcaster.keeps, slot, slots, self.aggregator.clip_norm,
                            self.cfg.fl.secagg)

    def run_round(self, server_round: int, vector: np.ndarray, exchange: Exchange) -> tuple[np.ndarray, RoundOutcome]:
        """One round; returns the new global model and what the round cost."""
        fl = self.cfg.fl
        self.refresh_reachable(exchange)
        partitions = self.sample(server_round)
        outcome = RoundOutcome(sampled=len(partitions), fp32_downlink_bytes=len(partitions) * vector.nbytes,
                               clip_norm=self.aggregator.clip_norm)
        replies = self.collude(server_round, self.send(server_round, vector, partitions, exchange, outcome))
        waits = True
        if fl.overselect:
            replies, waits = self.first_arrivals(replies, clients_per_round(fl), outcome)
        admitted = self.admission.admit(replies, vector, self.center, outcome, waits_for_missing=waits)
        if len(admitted) < fl.min_replies:
            raise self._failure(server_round, replies, outcome)
        if fl.secagg:
            mean = self.secure_mean(server_round, admitted, replies, exchange, outcome)
            return self.step(server_round, vector, admitted, [mean], outcome, weights=[1.0]), outcome
        return self.step(server_round, vector, admitted, [a.update for a in admitted], outcome), outcome

    def secure_mean(self, server_round: int, admitted: list[_Admitted], replies: Sequence[Reply], exchange: Exchange,
                    outcome: RoundOutcome) -> np.ndarray:
        """The mean of the admitted clients' updates, of which the server learns only the sum (``fedq.fl.secagg``):
        the round's grid from their reported block scales (or, with fl.dp, from the clip norm), then the stages."""
        fl, numel, start = self.cfg.fl, self.federation.numel, time.perf_counter()
        chosen = {a.partition for a in admitted}
        sent = {r.partition: r.reply.arrays for r in replies if r.partition in chosen and r.reply is not None}
        bits, block = self.federation.uplink.bits, self.federation.uplink.block_size  # type: ignore[attr-defined]
        keys = {p: public_keys_of(arrays, scale_blocks(numel, block, fl.dp.clip > 0))[0] for p, arrays in sent.items()}
        outcome.secagg_bytes += sum(payload_bytes(arrays) for arrays in sent.values())
        if fl.dp.clip:
            z = noise_multiplier(fl) if fl.dp.distributed else 0.0
            grid = Grid.of_clip(self.aggregator.clip_norm, numel, bits, len(keys), fl.secagg_step, fl.secagg_masks, z)
        else:
            grid = Grid.of_scales([arrays[1] for arrays in sent.values()], block, bits, len(keys), fl.secagg_step,
                                  fl.secagg_masks)
        rng = np.random.default_rng([self.cfg.seed, server_round, 0x5EC])
        total, count = SecureSum(server_round, numel, grid, fl.secagg_neighbours, rng).run(
            keys, self._stage_exchange(server_round, exchange, outcome))
        if count < len(keys):
            outcome.dropped[protocol.SECAGG_DROPPED] = len(keys) - count
        outcome.clients = count
        outcome.stage_seconds["secagg"] = time.perf_counter() - start
        return grid.decode_mean(total, count)

    def _stage_exchange(self, server_round: int, exchange: Exchange, outcome: RoundOutcome) -> Exchanger:
        """The exchange of one stage of secure aggregation, its bytes counted both ways (the masked updates as the
        uplink's, the rest also as the protocol's)."""
        def run(messages: dict[int, StageMessage]) -> dict[int, list[np.ndarray] | None]:
            requests = [TrainRequest(p, server_round, protocol.NO_DOWNLINK, stage=m.stage, extra=m.arrays,
                                     settings=m.settings) for p, m in messages.items()]
            replies = exchange(requests) if requests else []
            answers: dict[int, list[np.ndarray] | None] = {}
            for message in messages.values():
                outcome.downlink_bytes += payload_bytes(message.arrays)
                outcome.secagg_bytes += payload_bytes(message.arrays)
            for reply in replies:
                answers[reply.partition] = reply.reply.arrays if reply.reply is not None else None
                if reply.reply is None:
                    outcome.failures.append(reply.describe())
                    continue
                outcome.uplink_bytes += payload_bytes(reply.reply.arrays)
                if messages[reply.partition].stage != MASKED:
                    outcome.secagg_bytes += payload_bytes(reply.reply.arrays)
            return answers
        return run

    def send(self, server_round: int, vector: np.ndarray, partitions: list[int], exchange: Exchange,
             outcome: RoundOutcome, slots: int | None = None) -> list[Reply]:
        """Requests to ``partitions`` and their replies; a client asking for a resync is sent a delta against the
        seeded model in the same round; every downlink message counts."""
        slots = slots or len(partitions)
        stages, start = outcome.stage_seconds, time.perf_counter()
        requests = [self.request(p, server_round, vector, slot % slots, slots) for slot, p in enumerate(partitions)]
        stages["downlink"] = stages.get("downlink", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        replies = exchange(requests) if requests else []
        stages["exchange"] = stages.get("exchange", 0.0) + time.perf_counter() - start
        resync = [reply.partition for reply in replies if reply.error is not None and reply.reason == protocol.RESYNC]
        if resync:  # the client holds nothing the server can build on: a delta against the seeded model
            outcome.resynced += len(resync)
            for partition in resync:
                self.broadcaster.forget(partition)
            start = time.perf_counter()
            again = [self.request(p, server_round, vector, partitions.index(p) % slots, slots) for p in resync]
            requests += again
            replies = [reply for reply in replies if reply.partition not in resync] + exchange(again)
            stages["exchange"] += time.perf_counter() - start
        outcome.downlink_bytes += sum(request.downlink.nbytes for request in requests)
        for reply in replies:
            if reply.reply is None:
                self.broadcaster.forget(reply.partition)  # it may not hold the model it was sent
            if reply.error is not None and reply.reason == protocol.UNREACHABLE:
                self.unreachable.add(reply.partition)
                log.warning(f"{reply.describe()}; not sampled until its node is seen again")
        return replies

    def collude(self, server_round: int, replies: list[Reply]) -> list[Reply]:
        """The simulation's hook for colluding attackers (a ``collusive`` ``fl.attack``): they see the round's honest
        updates and all send the update the attack's ``collude`` makes of them, encoded as theirs."""
        if not self.faults.attack.collusive:
            return replies
        fl, uplink = self.cfg.fl, self.federation.uplink
        attackers = [r for r in replies if r.reply is not None and r.partition in self.faults.attackers]
        honest = []
        for reply in replies:
            if reply.reply is not None and reply.partition not in self.faults.attackers:
                try:
                    honest.append(uplink.decode_update(reply.reply.arrays, self.federation.numel, self.center).values)
                except CodecError:
                    pass
        if not attackers or not honest:
            return replies
        malicious = self.faults.attack.collude(honest, len(attackers), fl)
        for reply in attackers:
            rng = np.random.default_rng([self.cfg.seed, server_round, reply.partition, 0xA77])
            reply.reply.arrays = uplink.encode(malicious, rng)  # type: ignore[union-attr]
            reply.reply.metrics[protocol.PAYLOAD_BYTES] = float(payload_bytes(reply.reply.arrays))  # type: ignore[union-attr]
        return replies

    def first_arrivals(self, replies: list[Reply], target: int, outcome: RoundOutcome) -> tuple[list[Reply], bool]:
        """Over-selection: the round closes at the ``target``-th arrival on the virtual clock; the clients still
        training then are told to stop (nothing more is sent: their uplink does not count). Returns the replies
        the round uses, and whether it waits for clients that never reply (it does not once it is closed)."""
        arrived = sorted((r for r in replies if r.reply is not None),
                         key=lambda r: (float(r.reply.metrics.get(protocol.SIM_SECONDS, 0.0)), r.partition))  # type: ignore[union-attr]
        if len(arrived) <= target:
            return replies, True
        cut = {r.partition for r in arrived[target:]}
        outcome.dropped[protocol.NOT_NEEDED] = len(cut)
        return [r for r in replies if r.partition not in cut], False

    def step(self, server_round: int, vector: np.ndarray, admitted: list[_Admitted], updates: list[np.ndarray],
             outcome: RoundOutcome, weights: list[float] | None = None) -> np.ndarray:
        """``updates`` (the ``admitted`` ones, perhaps scaled; or, given their ``weights``, one secure mean of them)
        with what a client did not send filled from the round's other clients (``mask``), the defence
        (``fl.defence``, its screening counted in ``outcome``), Flower's strategy, and
        ``global += fl.server_lr x (aggregate - global)``."""
        fl = self.cfg.fl
        start = time.perf_counter()
        if weights is None:
            weights = [a.metrics[protocol.NUM_TOKENS] for a in admitted]
            updates = fill_from_senders(updates, [a.sent for a in admitted], weights)
        screened = updates
        view = RoundView(fl, self.cfg.seed, server_round, self.center, self._root_update(server_round, vector, outcome))
        updates, weights = self.defence(updates, weights, view)
        if not fl.secagg:  # a secure mean is no client's update: nothing to count
            self._count_screening(admitted, screened, updates, view.admitted, outcome)
        aggregate = self.aggregator(server_round, vector, updates, weights)
        self.aggregator.adapt_clipping(server_round, [bool(a.metrics.get(protocol.UNCLIPPED, 1.0)) for a in admitted])
        if self.server_lr != 1.0:
            aggregate = vector + self.server_lr * (aggregate - vector)
        self.center = aggregate - vector  # the last round's step: centered clipping's center, mask's reference
        outcome.stage_seconds["aggregate"] = time.perf_counter() - start - outcome.server_train_seconds
        return aggregate

    def _root_update(self, server_round: int, vector: np.ndarray, outcome: RoundOutcome) -> np.ndarray | None:
        """The server's own update on its root set, for a defence that measures the clients' against it."""
        if self.root is None:
            return None
        start = time.perf_counter()
        update = self.root.update(server_round, vector)
        outcome.server_train_seconds = time.perf_counter() - start
        return update

    def _count_screening(self, admitted: list[_Admitted], screened: list[np.ndarray], kept: list[np.ndarray],
                         weighed: list[bool] | None, outcome: RoundOutcome) -> None:
        """How the defence treated the attackers: a defence that returns some of the updates it was given (the very
        arrays: dnc, a filter of one's own, none) chose among them, one that says which it gave weight (``weighed``:
        fltrust, flame) weighed them; either choice is counted."""
        attacking = [a.partition in self.faults.attackers for a in admitted]
        outcome.attackers = sum(attacking)
        chosen, given = {id(update) for update in kept}, {id(update) for update in screened}
        if not self.counts_screening or (weighed is None and not chosen <= given):
            return  # it made new updates (mixing, buckets, clipping), or the strategy chooses again: not counted
        survived = weighed if weighed is not None else [id(update) in chosen for update in screened]
        outcome.attackers_admitted = sum(a and s for a, s in zip(attacking, survived))
        outcome.honest_removed = sum(not a and not s for a, s in zip(attacking, survived))

    def _failure(self, server_round: int, replies: Sequence[Reply], outcome: RoundOutcome) -> RoundFailedError:
        errors = [reply.error for reply in replies if reply.error]
        reasons = outcome.rejections + errors
        detail = reasons[0].strip().splitlines()[-1] if reasons else "no client was online or replied"
        counts = ", ".join(f"{n} {why}" for why, n in {**outcome.dropped, "rejected": outcome.rejected}.items() if n)
        return RoundFailedError(
            f"round {server_round}: {outcome.clients} usable updates of {outcome.sampled} sampled, fewer than "
            f"fl.min_replies={self.cfg.fl.min_replies} ({counts or 'none replied'}); first reason: {detail}"
        )

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = self.aggregator.state_arrays()
        return {**arrays, CENTER: self.center} if self.keeps_center else arrays

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        arrays = dict(arrays)
        if CENTER in arrays:
            self.center = arrays.pop(CENTER)
        self.aggregator.restore_state_arrays(arrays)
