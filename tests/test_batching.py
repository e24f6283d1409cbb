"""Token-budget batching: coverage, budget, padding, bos/eos placement, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from fedq.data.batching import Batch, encode_pairs, token_batches
from fedq.engine import training_pairs, within_length
from fedq.errors import FedqError

PAD, BOS, EOS = 0, 2, 3


def random_pairs(n: int = 300, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        # the first token is a unique tag so that every pair can be found again
        src = [1000 + i] + [rng.randint(4, 99) for _ in range(rng.randint(0, 30))]
        tgt = [5000 + i] + [rng.randint(4, 99) for _ in range(rng.randint(0, 40))]
        pairs.append((src, tgt))
    return pairs


def unpad(batch: Batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    out = []
    for row in range(batch.src.shape[0]):
        src = tuple(t for t in batch.src[row].tolist() if t != PAD)
        tgt_out = [t for t in batch.tgt_out[row].tolist() if t != PAD]
        assert tgt_out[-1] == EOS
        out.append((src, tuple(tgt_out[:-1])))
    return out


def test_every_pair_once_and_budget_respected():
    pairs = random_pairs()
    batches = token_batches(pairs, max_tokens=400, pad_id=PAD, bos_id=BOS, eos_id=EOS, seed=3)
    seen = Counter(p for b in batches for p in unpad(b))
    assert seen == Counter((tuple(s), tuple(t)) for s, t in pairs)
    for b in batches:
        rows, s_len = b.src.shape
        assert b.tgt_in.shape == b.tgt_out.shape == (rows, b.tgt_in.shape[1])
        assert rows * (s_len + b.tgt_in.shape[1]) <= 400
        assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == torch.long
    assert len(batches) < len(pairs) / 3  # batches are actually filled


def test_padding_bos_eos_and_token_counts():
    pairs = [([7, 8, 9], [10, 11]), ([7], [12, 13, 14, 15]), ([], [16])]
    (batch,) = token_batches(pairs, max_tokens=1000, pad_id=PAD, bos_id=BOS, eos_id=EOS, shuffle=False)
    # unshuffled order: sorted by (src_len, tgt_len)
    assert batch.src.tolist() == [[PAD, PAD, PAD], [7, PAD, PAD], [7, 8, 9]]
    assert batch.tgt_in.tolist() == [[BOS, 16, PAD, PAD, PAD], [BOS, 12, 13, 14, 15], [BOS, 10, 11, PAD, PAD]]
    assert batch.tgt_out.tolist() == [[16, EOS, PAD, PAD, PAD], [12, 13, 14, 15, EOS], [10, 11, EOS, PAD, PAD]]
    assert batch.n_src_tokens == 4 and batch.n_tgt_tokens == 2 + 5 + 3
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt_out, batch.tgt_out) and moved.n_tgt_tokens == batch.n_tgt_tokens


def test_oversized_pair_gets_its_own_batch():
    pairs = [([5] * 50, [6] * 50), ([5], [6]), ([5, 5], [6])]
    batches = token_batches(pairs, max_tokens=20, pad_id=PAD, bos_id=BOS, eos_id=EOS, shuffle=False)
    assert [b.src.shape for b in batches] == [(2, 2), (1, 50)]


def test_deterministic_given_seed_and_shuffled_across_seeds():
    pairs = random_pairs(200)
    key = lambda bs: [tuple(b.src[:, 0].tolist()) for b in bs]  # noqa: E731
    a = token_batches(pairs, 300, PAD, BOS, EOS, seed=1)
    b = token_batches(pairs, 300, PAD, BOS, EOS, seed=1)
    c = token_batches(pairs, 300, PAD, BOS, EOS, seed=2)
    assert key(a) == key(b)
    assert key(a) != key(c)
    unshuffled = token_batches(pairs, 300, PAD, BOS, EOS, shuffle=False)
    src_lens = [b.src.shape[1] for b in unshuffled]
    assert src_lens == sorted(src_lens)  # length-bucketed


class SplitTokenizer:
    def encode(self, text: str) -> list[int]:
        return [len(w) + 3 for w in text.split()]


def test_pairs_with_a_long_side_are_not_trained_on():
    pairs = [("a b c", "x y"), ("a", "x y z w"), ("a b", "c")]
    encoded = encode_pairs(pairs, SplitTokenizer())
    assert len(encoded) == 3
    assert within_length(encoded, 3) == [0, 2]
    assert training_pairs(encoded, 3) == [([4, 4, 4], [4, 4]), ([4, 4], [4])]
    with pytest.raises(FedqError, match="data.max_len=1"):
        training_pairs(encoded, 1)
