"""Secure aggregation (fl.secagg): the protocol's sum is exact, dropouts are recovered, the server sees only masked
vectors, its bytes are counted, and what cannot run under it is refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fedq.bitpack import unpack_bits
from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError
from fedq.fl import secagg
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.rounds import Coordinator
from helpers import TINY, TINY_RUN
from server.aggregation import FlowerAggregator


class Clients:
    """The clients' side of stages 2-4 in one process, with clients that stop answering at a chosen stage."""

    def __init__(self, codes: dict[int, np.ndarray], grid: secagg.Grid, drop: dict[str, set[int]] | None = None):
        self.codes, self.grid, self.drop = codes, grid, drop or {}
        self.secrets, self.keys = {}, {}
        for p in codes:
            self.secrets[p], (self.keys[p],) = secagg.advertise()
        self.seen: dict[str, dict[int, list[np.ndarray]]] = {}

    def __call__(self, messages):
        answers = {}
        for p, message in messages.items():
            if p in self.drop.get(message.stage, ()):
                answers[p] = None
                continue
            mine, arrays = self.secrets[p], message.arrays
            if message.stage == secagg.SHARES:
                answers[p] = secagg.share(mine, p, 5, arrays[0], arrays[1])
            elif message.stage == secagg.MASKED:
                answers[p] = secagg.masked_codes(mine, p, 5, self.codes[p], self.grid, arrays[0])
            else:
                answers[p] = secagg.reveal(mine, p, 5, arrays[0], arrays[1], arrays[2])
        self.seen[next(iter(messages.values())).stage] = {p: a for p, a in answers.items() if a is not None}
        return answers


def round_of(n: int, numel: int = 3000, bits: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = secagg.Grid(np.full(-(-numel // 1024), 0.01, np.float32), 1024, bits, secagg.modulus_bits(bits, n))
    codes = {p: grid.encode(rng.normal(0, 0.01, numel).astype(np.float32), rng) for p in range(3, 3 + n)}
    return grid, codes


def plain_sum(codes: dict[int, np.ndarray], without: set[int] = frozenset()) -> np.ndarray:
    return sum(c.astype(np.int64) for p, c in codes.items() if p not in without)


@pytest.mark.parametrize(("n", "degree"), [(5, 16), (24, 8)])  # everyone a neighbour; SecAgg+'s sparse graph
def test_the_unmasked_sum_is_the_plain_sum_of_the_clients_codes_and_no_masked_vector_shows_its_codes(n, degree):
    grid, codes = round_of(n)
    clients = Clients(codes, grid)
    total, count = secagg.SecureSum(5, 3000, grid, degree, np.random.default_rng(1)).run(clients.keys, clients)
    assert count == n
    np.testing.assert_array_equal(total, plain_sum(codes))  # exact: no wrap, every mask removed
    for p, (packed,) in clients.seen[secagg.MASKED].items():  # what the server received: uniform noise mod 2^K
        masked = unpack_bits(packed, grid.modulus_bits, 3000).astype(np.int64)
        assert packed.nbytes == math.ceil(3000 * grid.modulus_bits / 8)
        assert abs(np.corrcoef(masked, codes[p])[0, 1]) < 0.1 and masked.max() > 4 * grid.top


@pytest.mark.parametrize("stage", [secagg.MASKED, secagg.UNMASK])
def test_a_client_that_drops_after_sharing_is_recovered_from_its_neighbours_shares(stage):
    grid, codes = round_of(12)
    clients = Clients(codes, grid, {stage: {7}})
    total, count = secagg.SecureSum(5, 3000, grid, 8, np.random.default_rng(1)).run(clients.keys, clients)
    # dropped before its masked vector: its pairwise masks are rebuilt from its key's shares and it is not in the sum;
    # dropped after: its vector is in the sum and its self mask is rebuilt from the seed's shares of the others
    without = {7} if stage == secagg.MASKED else set()
    assert count == 12 - len(without)
    np.testing.assert_array_equal(total, plain_sum(codes, without))


def test_too_few_neighbours_left_to_rebuild_a_mask_fail_the_round_with_one_line():
    grid, codes = round_of(8)
    clients = Clients(codes, grid, {secagg.MASKED: {4}, secagg.UNMASK: {3, 5, 6}})
    with pytest.raises(secagg.SecAggError, match="of client .*'s 4 neighbours returned its shares, 3 needed"):
        secagg.SecureSum(5, 3000, grid, 4, np.random.default_rng(1)).run(clients.keys, clients)


def test_a_client_reveals_only_shares_addressed_to_it():
    grid, codes = round_of(4)
    clients = Clients(codes, grid)
    graph = secagg.neighbours(sorted(codes), 3, np.random.default_rng(0))
    shared = {p: secagg.share(clients.secrets[p], p, 5, np.array(graph[p]), np.stack([clients.keys[q] for q in graph[p]]))[0]
              for p in codes}
    meant_for_4 = shared[3][graph[3].index(4)]
    with pytest.raises(secagg.SecAggError, match="client 5 could not decrypt the share of client 3"):
        secagg.reveal(clients.secrets[5], 5, 5, np.array([3]), meant_for_4[None], np.array([1], np.uint8))


def test_the_shared_grid_rounds_without_bias_and_the_mean_decodes():
    rng = np.random.default_rng(0)
    update = rng.uniform(-0.02, 0.02, 4096).astype(np.float32)
    grid = secagg.Grid(np.array([0.01, 0.02, 0.01, 0.02], np.float32), 1024, 2, secagg.modulus_bits(2, 400))
    total = sum(grid.encode(update, rng).astype(np.int64) for _ in range(400))
    mean = grid.decode_mean(total.astype(np.uint32), 400)
    inside = np.abs(update) <= 1.5 * grid.per_value(4096)
    assert np.abs(mean - update)[inside].max() < 0.005  # unbiased: 400 roundings average to the value
    assert np.allclose(mean[~inside], np.sign(update[~inside]) * 1.5 * grid.per_value(4096)[~inside], atol=1e-6)
    scales = [secagg.block_scales(u, 1024) for u in (update, 2 * update, 3 * update)]
    assert scales[1].dtype == np.float16 and np.all(scales[0].astype(np.float32) >= np.abs(update).reshape(4, -1).max(1))
    np.testing.assert_allclose(secagg.Grid.of_scales(scales, 1024, 2, 3, 1.0).steps, scales[1].astype(np.float32) / 1.5)
    np.testing.assert_allclose(secagg.Grid.of_scales(scales, 1024, 2, 3, 0.5).steps, scales[1].astype(np.float32) / 3)
    dp = secagg.Grid.of_clip(2.0, 4096, 2, 3, 1.5)  # fl.dp: one public step, fl.secagg_step x clip / sqrt(values)
    assert dp.steps.tolist() == [pytest.approx(1.5 * 2.0 / 64)] and dp.block == 4096


def test_a_secure_round_through_the_clients_code_aggregates_the_grid_mean_and_counts_every_byte(tmp_path, monkeypatch):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "clients=6", "fl.clients_per_round=5",
                          "fl.secagg=true", "fl.secagg_neighbours=2"])
    validate_config(cfg)
    federation = Federation(cfg)
    coded: dict[int, np.ndarray] = {}
    original = secagg.masked_codes

    def recording(secrets, partition, server_round, codes, grid, sharing):
        coded[partition] = codes.copy()
        return original(secrets, partition, server_round, codes, grid, sharing)

    monkeypatch.setattr(secagg, "masked_codes", recording)
    store = ClientStore(tmp_path / "clients")
    start = federation.initial_vector()
    new, outcome = Coordinator(federation, FlowerAggregator(cfg)).run_round(1, start, LocalExchange(federation, store))
    assert outcome.clients == 5 and not outcome.failures and not list((tmp_path / "clients").glob("*.secagg.npz"))
    numel, blocks = federation.numel, -(-federation.numel // 1024)
    modulus = secagg.modulus_bits(federation.uplink.bits, 5)  # comm.uplink.bits (quant.bits' default)
    assert sorted(coded) == sorted(p for p in range(6) if p in coded) and len(coded) == 5 and new.shape == start.shape
    # uplink: keys + scales, 2 ciphertexts, the masked codes in K bits, 2 revealed shares (2 neighbours each)
    per_client = 2 * secagg.KEY_BYTES + 2 * blocks + 2 * secagg.CIPHER_BYTES + math.ceil(numel * modulus / 8) \
        + 2 * secagg.SHARE_BYTES
    assert outcome.uplink_bytes == 5 * per_client
    assert outcome.secagg_bytes > 5 * (2 * secagg.CIPHER_BYTES) and outcome.stage_seconds["secagg"] > 0


def test_secure_mean_is_exactly_the_decoded_sum(tmp_path, monkeypatch):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "clients=5", "fl.clients_per_round=4",
                          "fl.secagg=true", "comm.uplink.bits=4", "fl.secagg_step=0.5"])
    validate_config(cfg)
    federation = Federation(cfg)
    seen: dict[str, object] = {}
    of_scales = secagg.Grid.of_scales.__func__

    def grid_of(cls, scales, block, bits, count, multiplier, masked=True):
        seen["multiplier"] = multiplier
        return of_scales(cls, scales, block, bits, count, multiplier, masked)

    monkeypatch.setattr(secagg.Grid, "of_scales", classmethod(grid_of))
    decode = secagg.Grid.decode_mean

    def recording(grid, total, count):
        seen["grid"], seen["total"], seen["count"] = grid, total.copy(), count
        return decode(grid, total, count)

    coded: dict[int, np.ndarray] = {}
    original = secagg.masked_codes

    def codes_of(secrets, partition, server_round, codes, grid, sharing):
        coded[partition] = codes.copy()
        return original(secrets, partition, server_round, codes, grid, sharing)

    monkeypatch.setattr(secagg.Grid, "decode_mean", recording)
    monkeypatch.setattr(secagg, "masked_codes", codes_of)
    start = federation.initial_vector()
    new, _ = Coordinator(federation, FlowerAggregator(cfg)).run_round(1, start, LocalExchange(federation, ClientStore(None)))
    grid = seen["grid"]
    assert grid.bits == 4 and grid.modulus_bits == secagg.modulus_bits(4, 4) and seen["count"] == 4
    assert seen["multiplier"] == 0.5  # fl.secagg_step
    np.testing.assert_array_equal(seen["total"], plain_sum(coded))
    np.testing.assert_allclose(new - start, decode(grid, plain_sum(coded).astype(np.uint32), 4), rtol=1e-5, atol=1e-7)


def test_the_same_grid_in_the_clear_gives_the_same_model_in_fewer_bytes(tmp_path):
    runs = {}
    for masks in (True, False):
        cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "clients=5", "fl.clients_per_round=4",
                              "fl.secagg=true", f"fl.secagg_masks={masks}", "quant.bits=2"])
        validate_config(cfg)
        federation = Federation(cfg)
        runs[masks] = Coordinator(federation, FlowerAggregator(cfg)).run_round(
            1, federation.initial_vector(), LocalExchange(federation, ClientStore(None)))
    (masked, with_masks), (clear, in_clear) = runs[True], runs[False]
    np.testing.assert_array_equal(masked, clear)  # the sum is exact: masking changes nothing the model gets
    numel = federation.numel
    assert with_masks.uplink_bytes - in_clear.uplink_bytes == 4 * (
        math.ceil(numel * secagg.modulus_bits(2, 4) / 8) - math.ceil(numel * 2 / 8)
        + 3 * (secagg.CIPHER_BYTES + secagg.SHARE_BYTES))


def test_distributed_noise_sums_to_the_accountants_variance_and_rounding_stays_within_its_bound():
    numel, clients, z = 20000, 50, 0.8
    grid = secagg.Grid.of_clip(1.0, numel, 2, clients, 1.0, noise_multiplier=z)
    assert grid.norm_bound == pytest.approx(secagg.rounded_norm_bound(math.sqrt(numel), numel))
    assert math.sqrt(numel) < grid.norm_bound < 1.2 * math.sqrt(numel)  # rounding adds a little to the clipped norm
    rng, noise = np.random.default_rng(0), np.random.default_rng(1)
    update = rng.normal(size=numel)
    update *= 1.0 / np.linalg.norm(update)  # clipped to fl.dp.clip
    plain = secagg.Grid(grid.steps, grid.block, 2, grid.modulus_bits, norm_bound=grid.norm_bound)
    for _ in range(20):
        assert np.linalg.norm(plain.encode(update, rng) - 1.5) <= grid.norm_bound
    total = sum(grid.encode(update, rng, noise).astype(np.int64) for _ in range(clients)) % (1 << grid.modulus_bits)
    summed = grid.code_sum(total.astype(np.uint32), clients)  # below 0 and above the codes' range: recovered
    signal = clients * (np.clip(update / grid.steps[0], -1.5, 1.5) + 1.5)
    assert np.std(summed - signal) == pytest.approx(z * grid.norm_bound, rel=0.05)  # z x the bound, as accounted
    assert (summed < 0).any() or (summed > 3 * clients).any()


def test_a_distributed_dp_round_is_noised_by_the_clients_not_the_server(tmp_path, monkeypatch):
    settings = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "clients=6", "fl.clients_per_round=5", "fl.secagg=true",
                "fl.dp.clip=0.5", "fl.dp.noise_multiplier=0.5"]
    steps = {}
    for distributed in (False, True):
        cfg = compose_config([*settings, f"fl.dp.distributed={distributed}"])
        validate_config(cfg)
        federation = Federation(cfg)
        aggregator = FlowerAggregator(cfg)
        assert aggregator.private is not distributed  # Flower's central wrapper adds noise only when the clients do not
        start = federation.initial_vector()
        new, outcome = Coordinator(federation, aggregator).run_round(1, start, LocalExchange(federation, ClientStore(None)))
        assert outcome.clients == 5 and not outcome.failures
        steps[distributed] = new - start
    expected = 0.5 * 0.5 / 5  # z x C / cohort per value, either way
    assert np.std(steps[False]) == pytest.approx(expected, rel=0.2)
    bound = secagg.rounded_norm_bound(math.sqrt(steps[True].size), steps[True].size) / math.sqrt(steps[True].size)
    assert np.std(steps[True]) == pytest.approx(expected * bound, rel=0.2)  # z x the rounded codes' bound


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.strategy=fedmedian"], "cannot screen, rank or take medians .* fl.strategy=fedmedian"),
    (["fl.defence=flame"], "fl.defence=flame"),
    (["comm.uplink.name=topk"], "comm.uplink.name=topk sends per-client scales, indices or masks"),
    (["comm.uplink.entropy_coding=true"], "comm.uplink.entropy_coding and comm.uplink.correlated do not apply"),
    (["fl.attack=ipm", "fl.attackers=0.2"], "fl.attack=ipm colludes"),
    (["fl.max_update_norm=3"], "never sees under fl.secagg"),
    (["fl.dp.clip=0.1", "fl.dp.target_quantile=0.5", "fl.dp.noise_multiplier=0.1"], "counts each client's clipped bit"),
    (["fl.clients_per_round=2"], "with 2 clients a round"),
    (["fl.dp.clip=0.1", "fl.dp.noise_multiplier=1", "fl.dp.distributed=true", "fl.secagg_masks=false"],
     "fl.secagg_masks=false would send them in the clear"),
    (["fl.dp.clip=0.1", "fl.dp.distributed=true"], "fl.dp.distributed adds the clients' share of the noise"),
    (["fl.dp.clip=0.1", "fl.dp.noise_multiplier=1", "fl.dp.distributed=true", "fl.secagg=false"],
     "only secure aggregation keeps from the server"),
])
def test_what_cannot_run_under_secure_aggregation_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config([*TINY, "clients=10", "fl.clients_per_round=5", "fl.secagg=true", *overrides]))


def test_secure_aggregation_settings_without_it_are_refused():
    for setting in ("fl.secagg_neighbours=4", "fl.secagg_step=2", "fl.secagg_masks=false"):
        with pytest.raises(ConfigError, match="settings of secure aggregation: set fl.secagg=true"):
            validate_config(compose_config([*TINY, setting]))


@pytest.mark.e2e
def test_a_private_secure_run_through_flower_and_ray_states_epsilon_and_counts_the_protocol(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(  # 1 CPU a client: a pool of 2 nodes, so a client's stages may reach either node
        [sys.executable, "-m", "fedq.simulate", *(o for o in TINY_RUN if not o.startswith(("clients=", "fl.clients_per"))),
         "clients=4", "fl.clients_per_round=3", "quant.bits=2",
         "fl.secagg=true", "fl.dp.clip=0.5", "fl.dp.target_epsilon=8", "fl.num_cpus=1",
         f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "secure aggregation (SecAgg+): the server learns only each round's sum" in result.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["clients"] for row in rows] == [3, 3] and not any(row["failures"] for row in rows)
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"] == pytest.approx(8, rel=0.01) == summary["epsilon"]
    numel = rows[0]["fp32_uplink_bytes"] // (3 * 4)
    masked = 3 * math.ceil(numel * secagg.modulus_bits(2, 3) / 8)  # with fl.dp no block scales: the grid is public
    protocol_up = 3 * (2 * secagg.KEY_BYTES + 2 * secagg.CIPHER_BYTES + 2 * secagg.SHARE_BYTES)
    assert all(row["uplink_bytes"] == masked + protocol_up for row in rows)
    assert all(row["secagg_bytes"] > protocol_up and row["stage_seconds"]["secagg"] > 0 for row in rows)
    assert summary["secagg_bytes"] == sum(row["secagg_bytes"] for row in rows)
    assert not list(out.rglob("*.secagg.npz"))  # every client's secrets went when it had revealed its shares
