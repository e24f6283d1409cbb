import math

import numpy as np
import pytest

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm import (
    CodecError,
    encode_with_feedback,
    make_codec,
    payload_bytes,
)
from fedq.comm.codecs import CODECS, Stratum
from fedq.comm.downlink import DELTA, FULL, Broadcaster, SeededModel, receive
from fedq.comm.indexcode import decode_sorted_indices, encode_sorted_indices
from fedq.fl.partial import fill_from_senders


def normal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def round_trip(codec, x, seed=1):
    arrays = codec.encode(x, np.random.default_rng(seed))
    return arrays, codec.decode(arrays, x.size)


# --- bit packing -----------------------------------------------------------


@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 21, 32])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_bits_round_trip_uses_exactly_width_bits(width, count):
    rng = np.random.default_rng(width * 100 + count)
    values = rng.integers(0, 2**width, count, dtype=np.uint64)
    packed = pack_bits(values, width)
    assert packed.dtype == np.uint8
    assert packed.size == packed_nbytes(count, width)
    assert packed.size * 8 - count * width < 8 * (1 + width // 8)  # padding below one byte per stream
    assert np.array_equal(unpack_bits(packed, width, count).astype(np.uint64), values)


@pytest.mark.parametrize("width", range(1, 9))
def test_pack_bits_is_lsb_first_stream(width):
    values = np.random.default_rng(width).integers(0, 2**width, 101).astype(np.uint8)
    bits = ((values[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()
    assert np.array_equal(pack_bits(values, width), np.packbits(bits, bitorder="little"))


# --- index coding ----------------------------------------------------------


@pytest.mark.parametrize(
    "indices,numel",
    [
        ([], 10),
        ([0], 1),
        ([9], 10),
        (list(range(50)), 50),
        ([0, 1, 2, 999_990, 999_999], 1_000_000),
        (sorted(np.random.default_rng(0).choice(100_000, 1000, replace=False).tolist()), 100_000),
    ],
)
def test_index_code_round_trip(indices, numel):
    idx = np.array(indices, np.int64)
    r, unary, rem = encode_sorted_indices(idx)
    assert np.array_equal(decode_sorted_indices(r, unary, rem, idx.size, numel), idx)


def test_index_code_is_compact_for_random_and_clustered_positions():
    n, k = 1_000_000, 10_000
    scattered = np.sort(np.random.default_rng(0).choice(n, k, replace=False))
    clustered = np.arange(n - k, n)
    for idx in (scattered, clustered):
        r, unary, rem = encode_sorted_indices(idx)
        bits_per_index = 8 * (unary.size + rem.size) / k
        assert bits_per_index < 10, bits_per_index


def test_index_code_rejects_tampered_streams():
    idx = np.array([3, 17, 40], np.int64)
    r, unary, rem = encode_sorted_indices(idx)
    with pytest.raises(CodecError, match="out of range"):
        decode_sorted_indices(r, unary, rem, 3, 40)
    with pytest.raises(CodecError, match="expected 2"):
        decode_sorted_indices(r, unary, rem[: packed_nbytes(2, r)], 2, 100)
    with pytest.raises(CodecError, match="unary"):
        decode_sorted_indices(r, np.concatenate([unary, [255]]).astype(np.uint8), rem, 3, 100)
    with pytest.raises(CodecError, match="Rice parameter"):
        decode_sorted_indices(40, unary, rem, 3, 100)


# --- codecs ------------------------------------------------------------------


def test_fp32_is_exact_and_fp16_is_a_cast():
    x = normal(5000)
    arrays, y = round_trip(make_codec("fp32"), x)
    assert np.array_equal(y, x) and payload_bytes(arrays) == 4 * x.size
    arrays, y = round_trip(make_codec("fp16"), x)
    assert arrays[0].dtype == np.float16 and payload_bytes(arrays) == 2 * x.size
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_levels_error_and_packing(bits):
    block = 256
    x = normal(10 * block + 37) * 0.01
    codec = make_codec("uniform", bits=bits, block_size=block)
    arrays, y = round_trip(codec, x)
    codes, scales = arrays
    assert codes.dtype == np.uint8 and codes.size == math.ceil(x.size * bits / 8)
    assert scales.dtype == np.float16 and scales.size == math.ceil(x.size / block)
    s = scales.astype(np.float32)
    padded = np.concatenate([x, np.zeros(-x.size % block, np.float32)]).reshape(-1, block)
    assert np.all(s >= np.abs(padded).max(axis=1))  # scale rounded up to fp16
    assert np.all(s <= np.abs(padded).max(axis=1) * (1 + 2**-10))
    step = np.repeat(2 * s / (2**bits - 1), block)[: x.size]
    assert np.all(np.abs(y - x) <= step * 1.0001)
    for b in range(len(s)):
        assert len(np.unique(y[b * block : (b + 1) * block])) <= 2**bits


@pytest.mark.parametrize("bits", [2, 4])
def test_uniform_is_unbiased(bits):
    n, draws = 256, 4000
    x = normal(n, seed=3)
    codec = make_codec("uniform", bits=bits, block_size=n)
    # One block per copy: every copy gets the same scale and independent rounding.
    y = codec.decode(codec.encode(np.tile(x, draws), np.random.default_rng(0)), n * draws)
    mean = y.reshape(draws, n).mean(axis=0)
    step = 2 * np.abs(x).max() / (2**bits - 1)
    assert np.abs(mean - x).max() < 5 * step / (2 * math.sqrt(draws))


def test_sign_sends_block_mean_magnitude():
    block = 100
    x = normal(1050)
    x[5] = 0.0
    arrays, y = round_trip(make_codec("sign", block_size=block), x)
    assert arrays[0].size == math.ceil(x.size / 8)
    for b in range(math.ceil(x.size / block)):
        part = x[b * block : (b + 1) * block]
        scale = np.float32(np.float16(np.abs(part).mean()))
        assert np.array_equal(y[b * block : (b + 1) * block], np.where(part < 0, -scale, scale))
    assert y[5] > 0


def test_topk_keeps_the_largest_entries():
    x = normal(100_000)
    codec = make_codec("topk", bits=4, density=0.01)
    arrays, y = round_trip(codec, x)
    k = 1000
    assert arrays[0].tolist()[0] == k
    kept = np.flatnonzero(y)
    assert np.array_equal(kept, np.sort(np.argsort(-np.abs(x))[:k]))
    step = 2 * np.abs(x).max() / 15
    assert np.abs(y[kept] - x[kept]).max() <= step


def test_topk_handles_clustered_and_full_density():
    x = np.zeros(50_000, np.float32)
    x[-500:] = normal(500)  # every kept index at the end of the vector
    _, y = round_trip(make_codec("topk", bits=8, density=0.01), x)
    assert np.array_equal(np.flatnonzero(y), np.arange(49_500, 50_000))
    x = normal(3000)
    _, y = round_trip(make_codec("topk", bits=8, density=1.0, block_size=64), x)
    assert np.abs(y - x).max() <= 2 * np.abs(x).max() / 255


# --- codecs built for rare participation: unbiased, entropy-coded, correlated across a round's clients ----


@pytest.mark.parametrize("name,words", [("uniform", 2), ("mask", 3)])
def test_entropy_coding_sends_the_same_codes_in_fewer_bytes(name, words):
    x = normal(200_000) * np.where(np.arange(200_000) % 10 == 0, 20, 1).astype(np.float32)  # a few large values
    settings = dict(bits=4, density=0.5) if name == "mask" else dict(bits=4)
    packed = make_codec(name, **settings)
    coded = make_codec(name, **settings, entropy_coding=True)
    a, b = packed.encode(x, np.random.default_rng(0)), coded.encode(x, np.random.default_rng(0))
    np.testing.assert_array_equal(packed.decode(a, x.size), coded.decode(b, x.size))  # lossless: the same values
    assert payload_bytes(b) < 0.8 * payload_bytes(a)  # the codes' entropy is below 4 bits here
    b[words] = b[words][:-3]  # a truncated stream is refused, never decoded into other values
    with pytest.raises(CodecError, match="entropy-coded stream"):
        coded.decode(b, x.size)


def test_codes_of_one_repeated_value_need_no_coder_words():
    from fedq.comm.entropy import ans_decode, ans_encode

    header, counts, words = ans_encode(np.full(5000, -3))
    assert words.size == 0 and np.array_equal(ans_decode(header, counts, words, 5000, "grid"), np.full(5000, -3))
    codec = make_codec("grid")
    arrays, y = round_trip(codec, np.zeros(5000, np.float32))  # an all-zero update (what fedq sizes a run with)
    assert np.array_equal(y, np.zeros(5000, np.float32)) and arrays[2].size == 0
    arrays[2] = np.ones(1, np.uint32)  # words where none belong
    with pytest.raises(CodecError, match="entropy-coded stream"):
        codec.decode(arrays, 5000)


@pytest.mark.parametrize("step", [1.0, 4.0, 16.0])
def test_grid_is_unbiased_within_one_step_and_costs_less_at_coarser_steps(step):
    x = normal(64 * 1024, seed=5)
    codec = make_codec("grid", step=step, block_size=1024)
    arrays, y = round_trip(codec, x)
    steps = np.repeat(arrays[3].astype(np.float32), 1024)[: x.size]
    rms = np.sqrt(np.mean(x.reshape(-1, 1024) ** 2, axis=1))
    np.testing.assert_allclose(arrays[3].astype(np.float32), step * rms, rtol=2e-3)  # the step, at fp16
    assert np.all(np.abs(y - x) < steps * 1.0001)
    draws = [codec.decode(codec.encode(x[:1024], np.random.default_rng(seed)), 1024) for seed in range(2000)]
    assert np.abs(np.mean(draws, axis=0) - x[:1024]).max() < 6 * step * rms[0] / math.sqrt(2000)
    bits = 8 * payload_bytes(arrays) / x.size
    assert bits < {1.0: 2.6, 4.0: 1.1, 16.0: 0.45}[step]


def test_correlated_dithers_keep_each_client_unbiased_and_cancel_in_the_average():
    codec = make_codec("grid", step=4.0, block_size=4096)
    updates = [normal(4096, seed=10) + 0.3 * normal(4096, seed=20 + k) for k in range(5)]
    mean = np.mean(updates, axis=0)
    errors = {"independent": [], "correlated": []}
    for trial in range(40):
        for kind in errors:
            decoded = []
            for slot, update in enumerate(updates):
                rng = np.random.default_rng([trial, slot])
                stratum = Stratum(1, trial + 1, slot, 5) if kind == "correlated" else None
                decoded.append(codec.decode(codec.encode(update, rng, stratum), update.size))
            errors[kind].append(np.mean((np.mean(decoded, axis=0) - mean) ** 2))
    assert np.mean(errors["correlated"]) < 0.6 * np.mean(errors["independent"])  # about half, measured
    one = [codec.decode(codec.encode(updates[0], np.random.default_rng(t), Stratum(1, t, 2, 5)), 4096) for t in range(1500)]
    step = 4.0 * np.sqrt(np.mean(updates[0] ** 2))  # each client stays unbiased: its mean error shrinks as 1/sqrt(draws)
    assert np.abs(np.mean(one, axis=0) - updates[0]).mean() < step / math.sqrt(1500)


def sent_by(codec, arrays, n: int) -> np.ndarray:
    """Which values a mask payload carries, as the server reads it."""
    return codec.decode_update(arrays, n, np.zeros(n, np.float32)).sent


def test_stratified_masks_send_every_value_from_about_density_x_slots_clients_and_stay_random_per_client():
    n, codec = 40_000, make_codec("mask", density=0.24, bits=8)
    x = normal(n)
    senders = {}
    for kind in ("independent", "stratified"):
        masks = [sent_by(codec, codec.encode(x, np.random.default_rng(slot), Stratum(3, 7, slot, 5) if kind == "stratified"
                                             else None), n) for slot in range(5)]
        assert all(abs(m.mean() - 0.24) < 0.01 for m in masks)  # each client still sends its density
        senders[kind] = np.sum(masks, axis=0)
    assert abs(np.mean(senders["independent"] == 0) - 0.76**5) < 0.01  # about a quarter sent by none
    assert set(np.unique(senders["stratified"])) == {1, 2}  # 0.24 x 5 = 1.2: one or two senders, never none
    other_round = sent_by(codec, codec.encode(x, np.random.default_rng(0), Stratum(3, 8, 0, 5)), n)
    assert abs(np.mean(other_round & sent_by(codec, codec.encode(x, np.random.default_rng(0), Stratum(3, 7, 0, 5)), n))
               - 0.24**2) < 0.01  # a slot's mask changes from round to round


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_uniform_compression_ratio(bits):
    x = normal(1_000_000)
    arrays = make_codec("uniform", bits=bits).encode(x, np.random.default_rng(0))
    assert 4 * x.size / payload_bytes(arrays) >= 0.95 * 32 / bits


def test_sign_compression_ratio():
    x = normal(1_000_000)
    arrays = make_codec("sign").encode(x, np.random.default_rng(0))
    assert 4 * x.size / payload_bytes(arrays) >= 28


def test_topk_compression_ratio():
    x = normal(1_000_000)
    arrays = make_codec("topk", bits=4, density=0.01).encode(x, np.random.default_rng(0))
    assert 4 * x.size / payload_bytes(arrays) >= 100


@pytest.mark.parametrize("name,bits", [("uniform", 4), ("sign", None)])
def test_ten_million_values_round_trip(name, bits):
    """A model-sized vector in one call (its speed is benchmarks/bench_codecs.py's to measure, not a test's)."""
    x = normal(10_000_000)
    codec = make_codec(name, bits=bits)
    decoded = codec.decode(codec.encode(x, np.random.default_rng(0)), x.size)
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    assert np.mean(np.sign(decoded) == np.sign(x)) > (0.9 if name == "uniform" else 0.999)


def test_mask_sends_a_seeded_subset_without_indices_and_the_server_fills_the_rest_from_its_reference():
    n, density = 50_000, 0.15
    codec = make_codec("mask", density=density, bits=8)
    x, reference = normal(n, 0), normal(n, 5)
    first, second = codec.encode(x, np.random.default_rng(1)), codec.encode(x, np.random.default_rng(2))
    sent = [codec.decode_update(arrays, n, reference).values != reference for arrays in (first, second)]
    for arrays, kept in zip((first, second), sent):
        assert abs(kept.mean() - density) < 0.01
        k = int(kept.sum())  # no index is sent: a 40-byte header (seed, round, count, slot), the codes and one scale per block of them
        assert payload_bytes(arrays) == 40 + k + 2 * math.ceil(k / 1024)
        update = codec.decode_update(arrays, n, reference).values
        np.testing.assert_array_equal(update[~kept], reference[~kept])  # unsent: the reference, exactly
        assert np.abs(update[kept] - x[kept]).max() <= 2 * np.abs(x).max() / 255 + 1e-6  # sent: within one level
        np.testing.assert_array_equal(codec.decode(arrays, n)[~kept], 0.0)
    assert abs((sent[0] & sent[1]).mean() - density**2) < 0.005  # each client draws its own subset
    assert [sent_by(codec, arrays, n).tolist() for arrays in (first, second)] == [m.tolist() for m in sent]


def test_mask_of_grid_values_sends_the_seeded_subset_on_a_grid_within_one_step():
    n = 50_000
    codec = make_codec("mask", density=0.2, step=1.5)
    x = normal(n, 0)
    arrays = codec.encode(x, np.random.default_rng(4))
    update, sent = codec.decode_update(arrays, n, np.zeros(n, np.float32))
    assert abs(sent.mean() - 0.2) < 0.01 and not update[~sent].any()
    kept, steps = x[sent], arrays[-1].astype(np.float64)  # a grid step per block of the sent values
    counts = np.minimum(1024, kept.size - 1024 * np.arange(steps.size))
    np.testing.assert_allclose(steps, 1.5 * np.sqrt(np.sum(_blocks_of(kept, 1024) ** 2, axis=1) / counts), rtol=2e-3)
    assert np.all(np.abs(_blocks_of(update[sent] - kept, 1024)) <= steps[:, None])
    assert 4 * n / payload_bytes(arrays) > 60  # about 1.6 bits per sent value, ANS-coded
    with pytest.raises(CodecError, match="takes bits .uniform values. or step .grid values., not both"):
        make_codec("mask", bits=2, step=1.5)
    with pytest.raises(CodecError, match="entropy_coding applies to bits"):
        make_codec("mask", step=1.5, entropy_coding=True)
    damaged = [*arrays[:-1], arrays[-1][:-1]]
    with pytest.raises(CodecError, match="mask payload's values: grid payload: steps has"):
        codec.decode(damaged, n)


@pytest.mark.parametrize("settings", [{"step": 4.0}, {"bits": 2}])
def test_a_values_senders_round_it_with_stratified_dithers_and_each_stays_unbiased(settings):
    n, codec = 100_000, make_codec("mask", density=0.4, **settings)  # 0.4 x 5 slots: every value has two senders
    x = normal(n, 0)

    def round_mean(trial: int, independent: bool) -> np.ndarray:
        decoded, sent = [], []
        for slot in range(5):
            arrays = codec.encode(x, np.random.default_rng([trial, slot]), Stratum(trial, 1, slot, 5))
            if independent:  # the same mask, each sender rounding with its own dither
                arrays = [arrays[0], *codec.values.encode(x[codec.sent(arrays[0], n)], np.random.default_rng([trial, slot, 1]))]
            update, mask = codec.decode_update(arrays, n, np.zeros(n, np.float32))
            decoded.append(update)
            sent.append(mask)
        return np.mean(fill_from_senders(decoded, sent, [1.0] * 5), axis=0)

    errors = {kind: np.mean([np.mean((round_mean(t, kind) - x) ** 2) for t in range(2)]) for kind in (True, False)}
    assert errors[False] < 0.85 * errors[True]  # the two senders' rounding errors partly cancel (measured: 0.79)
    reads = [codec.decode_update(codec.encode(x[:4096], np.random.default_rng(t), Stratum(1, t, 2, 5)), 4096, np.zeros(4096))
             for t in range(1500)]
    times = np.sum([read.sent for read in reads], axis=0)
    estimate = np.sum([read.values for read in reads], axis=0) / times
    error = np.abs(estimate - x[:4096]) * np.sqrt(times)  # where it sends a value, its mean is the value
    assert np.mean(error) < 2.0 * np.sqrt(np.mean(x**2)) and abs(np.mean(estimate - x[:4096])) < 0.01


def _blocks_of(values: np.ndarray, size: int) -> np.ndarray:
    padded = np.zeros(-(-values.size // size) * size, np.float64)
    padded[: values.size] = values
    return padded.reshape(-1, size)


@pytest.mark.parametrize("carry", [0.0, 0.5])
def test_mask_carry_scales_what_an_unsent_value_moves(carry):
    n = 20_000
    codec, full = make_codec("mask", density=0.2, bits=8, carry=carry), make_codec("mask", density=0.2, bits=8)
    x, reference = normal(n, 0), normal(n, 5)
    arrays = codec.encode(x, np.random.default_rng(3))
    update, sent = codec.decode_update(arrays, n, reference)
    np.testing.assert_array_equal(update[~sent], np.float32(carry) * reference[~sent])
    np.testing.assert_array_equal(update[sent], full.decode_update(arrays, n, reference).values[sent])
    with pytest.raises(CodecError, match=r"carry must be in \[0, 1\], got 1.5"):
        make_codec("mask", carry=1.5)
    with pytest.raises(CodecError, match="codec uniform does not use carry"):
        make_codec("uniform", carry=0.5)


def test_a_round_averages_a_masked_value_over_the_clients_that_sent_it():
    reference = np.full(4, 9.0, np.float32)
    updates = [np.array([1.0, 2.0, 9.0, 9.0], np.float32), np.array([3.0, 9.0, 9.0, 5.0], np.float32),
               np.array([7.0, 7.0, 7.0, 7.0], np.float32)]
    sent = [np.array([True, True, False, False]), np.array([True, False, False, True]), None]  # the third sent all
    filled = fill_from_senders(updates, sent, [1.0, 3.0, 0.0])  # the third weighs nothing: only 1 and 2 count
    average = sum(w * u for w, u in zip([1.0, 3.0, 0.0], filled)) / 4.0
    np.testing.assert_allclose(average, [(1 + 9) / 4, 2.0, reference[2], 5.0])  # value 2: nobody with weight sent it
    np.testing.assert_array_equal(filled[2], updates[2])
    assert fill_from_senders(updates[2:], [None], [1.0])[0] is updates[2]


def test_a_mask_payload_whose_seed_or_density_is_not_the_servers_is_rejected():
    n = 20_000
    arrays = make_codec("mask", density=0.1).encode(normal(n), np.random.default_rng(0))
    with pytest.raises(CodecError, match="density 0.2, but it says it carries"):
        make_codec("mask", density=0.2).decode(arrays, n)
    damaged = [arrays[0].copy(), *arrays[1:]]
    damaged[0][0] ^= 1
    with pytest.raises(CodecError, match="its seed draws .* a damaged seed"):
        make_codec("mask", density=0.1).decode(damaged, n)
    damaged[0] = arrays[0].copy()
    damaged[0][3] = damaged[0][4]  # a slot outside the round's slots
    with pytest.raises(CodecError, match="slot 1 of 1 slots"):
        make_codec("mask", density=0.1).decode(damaged, n)


# --- bad settings and malformed payloads --------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(name="gzip"), "codec='gzip' is unknown; choose one of fp32, fp16, uniform, grid, sign, topk, mask"),
        (dict(name="uniform", bits=1), "bits must be one of 2..8"),
        (dict(name="uniform", bits=16), "bits must be one of 2..8"),
        (dict(name="topk", bits=1), "bits must be one of 2..8"),
        (dict(name="topk", density=0.0), r"density must be in \(0, 1\]"),
        (dict(name="topk", density=1.5), r"density must be in \(0, 1\]"),
        (dict(name="sign", block_size=0), "block_size must be >= 1"),
        (dict(name="sign", bits=4), "codec sign does not use bits"),
        (dict(name="uniform", density=0.1), "codec uniform does not use density"),
        (dict(name="fp32", block_size=512), "codec fp32 does not use block_size"),
    ],
)
def test_make_codec_rejects_bad_settings(kwargs, message):
    with pytest.raises(CodecError, match=message):
        make_codec(**kwargs)


def test_encode_rejects_non_finite_and_out_of_range_updates():
    x = normal(100)
    x[3] = np.nan
    with pytest.raises(CodecError, match="NaN"):
        make_codec("uniform").encode(x, np.random.default_rng(0))
    with pytest.raises(CodecError, match="float16 range"):
        make_codec("fp16").encode(np.array([1e6], np.float32), np.random.default_rng(0))
    with pytest.raises(CodecError, match="1-D float"):
        make_codec("fp32").encode(np.zeros((2, 2), np.float32), np.random.default_rng(0))


@pytest.mark.parametrize("name", CODECS.names())  # every codec, the registry's list
def test_decode_rejects_wrong_count_dtype_and_length(name):
    codec = make_codec(name, density=0.1 if name in ("topk", "mask") else None)
    n = 1000
    arrays = codec.encode(normal(n), np.random.default_rng(0))
    with pytest.raises(CodecError, match="arrays, expected"):
        codec.decode(arrays + [np.zeros(1, np.uint8)], n)
    with pytest.raises(CodecError, match="expected 1-D"):
        codec.decode([a.astype(np.float64) for a in arrays], n)
    with pytest.raises(CodecError):
        codec.decode(arrays, n + 100)


def test_decode_rejects_bad_header_scales_and_values():
    n = 1000
    rng = np.random.default_rng(0)
    topk = make_codec("topk", density=0.1)
    arrays = topk.encode(normal(n), rng)
    arrays[0] = np.array([n + 1, arrays[0][1]], np.uint32)
    with pytest.raises(CodecError, match="k=1001, expected 100"):
        topk.decode(arrays, n)
    uniform = make_codec("uniform", bits=4)
    codes, scales = uniform.encode(normal(n), rng)
    scales[0] = np.inf
    with pytest.raises(CodecError, match="scales must be finite"):
        uniform.decode([codes, scales], n)
    with pytest.raises(CodecError, match="NaN"):
        make_codec("fp32").decode([np.full(n, np.nan, np.float32)], n)


# --- error feedback ------------------------------------------


@pytest.mark.parametrize("name", ["sign", "topk"])
def test_error_feedback_residual_holds_what_was_not_sent(name):
    codec = make_codec(name, density=0.05 if name == "topk" else None)
    rng = np.random.default_rng(0)
    inputs = [normal(2000, seed=s) for s in range(20)]
    residual, sent = None, np.zeros(2000, np.float64)
    for x in inputs:
        arrays, residual = encode_with_feedback(codec, x, residual, rng)
        sent += codec.decode(arrays, x.size)
    np.testing.assert_allclose(sent + residual, np.sum(inputs, axis=0), atol=1e-4)


def test_error_feedback_makes_sign_messages_converge_to_the_true_mean():
    codec = make_codec("sign", block_size=1000)
    rng = np.random.default_rng(0)
    target = normal(1000) + 0.5
    rounds = 400
    with_feedback, without, residual = np.zeros(1000), np.zeros(1000), None
    for _ in range(rounds):
        arrays, residual = encode_with_feedback(codec, target, residual, rng)
        with_feedback += codec.decode(arrays, target.size) / rounds
        without += codec.decode(codec.encode(target, rng), target.size) / rounds
    error_with = np.abs(with_feedback - target).mean()
    error_without = np.abs(without - target).mean()
    assert error_with < 0.05 * np.abs(target).mean()
    assert error_without > 10 * error_with


# --- the downlink: deltas against what each client holds --------------------


@pytest.mark.parametrize("name,options,bound", [("uniform", {"bits": 4}, 0.01), ("grid", {"step": 2.0}, 0.08)])
def test_a_client_that_skipped_rounds_rebuilds_the_servers_held_model_bit_for_bit(name, options, bound):
    codec = make_codec(name, **options)
    seeded = SeededModel.of(normal(5000))
    server = Broadcaster(codec, seeded, capacity=2)
    rng = np.random.default_rng(0)
    model = seeded.vector.copy()
    clients: dict[int, tuple[np.ndarray, int]] = {}
    sent = {0: 0, 1: 0}
    for server_round in range(1, 9):
        model = model + 0.01 * normal(5000, seed=server_round)
        for client in ([0, 1] if server_round in (1, 8) else [0]):  # client 1 skips rounds 2-7
            message = server.message_for(client, model, server_round)
            held, held_round = clients.get(client, (None, None))
            now = receive(codec, message, model.size, held, held_round, seeded)
            clients[client] = (now, server_round)
            sent[client] += message.nbytes
            np.testing.assert_array_equal(now, server.held[client][1])  # the same bits on both sides
            assert message.kind == DELTA and message.base_round == (0 if server_round == 1 else held_round)
    # One delta per round, the first against the seeded model; the catch-up is one delta too (4-bit: fixed size;
    # the grid's entropy-coded size depends on the delta, and a catch-up of 7 rounds has larger codes).
    delta_bytes = payload_bytes(codec.encode(model, rng))
    if name == "uniform":
        assert sent[0] == 8 * delta_bytes and sent[1] == 2 * delta_bytes
    else:
        assert sent[1] < sent[0] < 0.25 * 8 * 4 * model.size  # well under a bit per value
    # Error feedback: the held model tracks the global one within a step of the last delta's quantizer.
    assert np.abs(clients[0][0] - model).max() < bound


def test_the_downlink_grid_step_defaults_to_1_and_its_error_settles_where_step_4_would_diverge():
    from fedq.comm.settings import CommConfig, DownlinkConfig, downlink_codec

    assert downlink_codec(CommConfig(downlink=DownlinkConfig(name="grid"))).step == 1.0
    seeded = SeededModel.of(normal(20000))
    errors = {}
    for step in (2.0, 4.0):
        codec, model, held, held_round = make_codec("grid", step=step), seeded.vector.copy(), None, None
        server = Broadcaster(codec, seeded, capacity=1)
        for server_round in range(1, 21):
            model = model + 0.01 * normal(20000, seed=server_round)
            held = receive(codec, server.message_for(0, model, server_round), model.size, held, held_round, seeded)
            held_round = server_round
        errors[step] = float(np.sqrt(np.mean(np.square(held - model))))
    assert errors[2.0] < 0.02 and errors[4.0] > 0.1  # a round's change is 0.01


def test_the_clients_that_hold_the_seeded_model_are_sent_one_message_a_round_and_the_others_their_own():
    codec = make_codec("uniform", bits=4)
    seeded = SeededModel.of(normal(3000))
    server = Broadcaster(codec, seeded, capacity=8)
    model = seeded.vector + 0.01 * normal(3000, seed=1)
    first = [server.message_for(client, model, 1) for client in range(3)]
    assert first[0] is first[1] is first[2] and first[0].base_round == 0  # encoded once, one draw
    assert server.held[0][1] is server.held[2][1]  # and held once
    np.testing.assert_array_equal(receive(codec, first[1], model.size, None, None, seeded), server.held[1][1])
    model = model + 0.01 * normal(3000, seed=2)
    again = server.message_for(0, model, 2)  # client 0 holds round 1's model: a delta of its own
    new = [server.message_for(client, model, 2) for client in (5, 6)]  # never synced: the round's shared one
    assert again.base_round == 1 and again is not new[0] and new[0] is new[1] and new[0] is not first[0]
    assert server.message_for(7, model + 1, 2) is not new[0]  # another global vector, another message
    whole = Broadcaster(make_codec("fp16"))
    assert whole.message_for(0, model, 3) is whole.message_for(1, model, 3)


def test_a_delta_against_a_model_the_client_does_not_hold_is_refused():
    codec = make_codec("uniform", bits=8)
    seeded = SeededModel.of(normal(100))
    server = Broadcaster(codec, seeded, capacity=4)
    model = normal(100, seed=1)
    server.message_for(3, model, 1)
    message = server.message_for(3, model + 1, 2)
    with pytest.raises(CodecError, match="delta against round 1 but this client holds the model of round 5"):
        receive(codec, message, 100, model, 5, seeded)
    with pytest.raises(CodecError, match="holds no model"):
        receive(codec, message, 100, None, None, seeded)
    server.forget(3)
    first = server.message_for(3, model, 3)
    assert first.kind == DELTA and first.base_round == 0  # back to the seeded model, which the client can rebuild
    np.testing.assert_array_equal(receive(codec, first, 100, model, 2, seeded), server.held[3][1])
    other_seed = SeededModel.of(normal(100, seed=7))
    with pytest.raises(CodecError, match="seeded model differs"):
        receive(codec, first, 100, None, None, other_seed)


def test_a_model_beyond_fp16_range_goes_whole_at_fp32():
    seeded = SeededModel.of(np.zeros(64, np.float32))
    server = Broadcaster(make_codec("uniform", bits=4), seeded)  # the delta, too, is beyond its fp16 scales
    model = normal(64)
    model[3] = 1e6
    message = server.message_for(0, model, 1)
    assert message.kind == FULL and message.nbytes == model.nbytes
    np.testing.assert_array_equal(receive(server.codec, message, 64, None, None, seeded), model)


def test_a_whole_model_is_sent_when_a_delta_would_cost_more():
    codec = make_codec("topk", bits=8, density=1.0)  # for one value, its header alone is more than fp32
    server = Broadcaster(codec, SeededModel.of(np.zeros(1, np.float32)))
    model = normal(1)
    assert server.message_for(0, model, 1).kind == FULL
    assert server.message_for(0, model + 1, 2).kind == FULL
