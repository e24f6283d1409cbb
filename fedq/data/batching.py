"""Token-budget batches of length-bucketed sentence pairs, padded for teacher forcing."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedq.data.tokenizer import SubwordTokenizer

EncodedPair = tuple[list[int], list[int]]


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] long, padded with pad_id
    tgt_in: torch.Tensor  # [B, T] bos + target tokens
    tgt_out: torch.Tensor  # [B, T] target tokens + eos
    n_src_tokens: int  # non-pad entries of src
    n_tgt_tokens: int  # non-pad entries of tgt_out

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.n_src_tokens, self.n_tgt_tokens
        )


def encode_pairs(pairs: Sequence[tuple[str, str]], tokenizer: SubwordTokenizer) -> list[EncodedPair]:
    """Subword ids of each pair, in order (``fedq.engine.within_length`` picks the ones trained on)."""
    return [(tokenizer.encode(src), tokenizer.encode(tgt)) for src, tgt in pairs]


def token_batches(
    encoded: Sequence[EncodedPair],
    max_tokens: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    shuffle: bool = True,
    seed: int = 0,
) -> list[Batch]:
    """Group pairs of similar length so that ``B * (S + T) <= max_tokens`` for every batch.

    S and T are the padded source and target lengths (T counts the bos/eos slot). A
    pair that alone exceeds the budget gets a batch of its own. With ``shuffle`` the
    ties in length are broken at random and the batch order is shuffled; the result
    depends only on ``seed``.
    """
    rng = random.Random(seed)
    tiebreak = [rng.random() for _ in encoded] if shuffle else [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), len(encoded[i][1]), tiebreak[i]))
    groups: list[list[int]] = []
    src_len = tgt_len = 0
    for i in order:
        s, t = len(encoded[i][0]), len(encoded[i][1]) + 1
        if groups and (len(groups[-1]) + 1) * (max(src_len, s) + max(tgt_len, t)) <= max_tokens:
            groups[-1].append(i)
            src_len, tgt_len = max(src_len, s), max(tgt_len, t)
        else:
            groups.append([i])
            src_len, tgt_len = s, t
    if shuffle:
        rng.shuffle(groups)
    return [_collate([encoded[i] for i in group], pad_id, bos_id, eos_id) for group in groups]


def _collate(pairs: Sequence[EncodedPair], pad_id: int, bos_id: int, eos_id: int) -> Batch:
    src_len = max(len(s) for s, _ in pairs)
    tgt_len = max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), src_len), pad_id, dtype=torch.long)
    tgt_in = torch.full((len(pairs), tgt_len), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(pairs), tgt_len), pad_id, dtype=torch.long)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        tgt_in[row, : len(t) + 1] = torch.tensor([bos_id, *t], dtype=torch.long)
        tgt_out[row, : len(t) + 1] = torch.tensor([*t, eos_id], dtype=torch.long)
    n_src = sum(len(s) for s, _ in pairs)
    n_tgt = sum(len(t) + 1 for _, t in pairs)
    return Batch(src, tgt_in, tgt_out, n_src, n_tgt)
