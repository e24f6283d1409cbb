"""Batched greedy and beam-search decoding with an incremental key/value cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedq.errors import ConfigError
from fedq.model.transformer import DecoderCache, Transformer


@dataclass
class DecodeConfig:
    """``decode.*``: how translations are searched for when a model is scored."""

    beam: int = 1  # 1 = greedy
    length_penalty: float = 1.0
    max_len_a: float = 1.2  # max output length = a * source length + b
    max_len_b: int = 10
    batch_size: int = 64

    def max_length(self, source_length: int) -> int:
        return int(self.max_len_a * source_length + self.max_len_b)


def validate_decode_config(cfg: DecodeConfig) -> None:
    for name, low in (("beam", 1), ("batch_size", 1), ("max_len_a", 0), ("max_len_b", 0)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"decode.{name}={getattr(cfg, name)} must be >= {low}")
    if cfg.max_len_a == 0 and cfg.max_len_b == 0:
        raise ConfigError("decode.max_len_a and decode.max_len_b are both 0: no output could be produced")


def _reorder_cache(cache: DecoderCache, order: torch.Tensor) -> None:
    for layer_cache in cache:
        for key, value in layer_cache.items():
            layer_cache[key] = value.index_select(0, order)


@torch.no_grad()
def greedy_decode(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """Most likely next token at each step; returns token ids without bos/eos.

    ``use_cache=False`` recomputes the whole prefix at every step (the reference
    the cache is checked against, and the baseline of the decoding benchmark).
    """
    memory, src_mask = model.encode(src)
    batch = src.size(0)
    max_len = min(max_len, model.shape.max_positions - 1)
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    cache = model.new_cache() if use_cache else None
    for step in range(max_len):
        if cache is not None:
            logits = model.decode(tokens[:, -1:], memory, src_mask, cache, offset=step)
        else:
            logits = model.decode(tokens, memory, src_mask)
        next_token = logits[:, -1].argmax(dim=-1)
        next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == eos_id
        if bool(finished.all()):
            break
    return [_strip(row.tolist()[1:], eos_id) for row in tokens]


def _strip(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam: int = 4,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search; a finished hypothesis scores log p / length**length_penalty."""
    batch = src.size(0)
    device = src.device
    max_len = min(max_len, model.shape.max_positions - 1)
    memory, src_mask = model.encode(src)
    memory = memory.repeat_interleave(beam, dim=0)
    src_mask = src_mask.repeat_interleave(beam, dim=0)
    cache = model.new_cache()

    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at first
    hyps: list[list[list[int]]] = [[[] for _ in range(beam)] for _ in range(batch)]
    finals: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    last = torch.full((batch * beam, 1), bos_id, dtype=torch.long, device=device)

    for step in range(max_len):
        logits = model.decode(last, memory, src_mask, cache, offset=step)[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.size(-1)
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beam * vocab)
        best_scores, best_index = candidates.topk(2 * beam, dim=-1)
        top_scores, top_index = best_scores.tolist(), best_index.tolist()

        new_scores = torch.full((batch, beam), float("-inf"), device=device)
        order = torch.arange(batch * beam, device=device).view(batch, beam).clone()
        next_tokens = torch.full((batch, beam), eos_id, dtype=torch.long, device=device)
        new_hyps: list[list[list[int]]] = [[[] for _ in range(beam)] for _ in range(batch)]
        for b in range(batch):
            if done[b]:
                continue
            alive = 0
            for score, index in zip(top_scores[b], top_index[b]):
                if score == float("-inf"):
                    break
                origin, token = divmod(index, vocab)
                if token == eos_id:
                    length = len(hyps[b][origin]) + 1
                    finals[b].append((score / length**length_penalty, hyps[b][origin]))
                    continue
                new_scores[b, alive] = score
                order[b, alive] = b * beam + origin
                next_tokens[b, alive] = token
                new_hyps[b][alive] = hyps[b][origin] + [token]
                alive += 1
                if alive == beam:
                    break
            best_alive = max(top_scores[b][0], new_scores[b, 0].item())
            best_final = max((s for s, _ in finals[b]), default=float("-inf"))
            # Scores only fall with length, so an alive beam that already scores below
            # the best finished one (before its length bonus can grow) is given up on
            # once `beam` hypotheses have finished.
            if len(finals[b]) >= beam and best_final >= best_alive / max_len**length_penalty:
                done[b] = True
            if alive == 0:
                done[b] = True
        if all(done):
            break
        scores = new_scores
        for b in range(batch):
            if done[b]:
                scores[b] = float("-inf")
        hyps = new_hyps
        _reorder_cache(cache, order.view(-1))
        last = next_tokens.view(-1, 1)

    results = []
    for b in range(batch):
        if not done[b]:  # ran out of length: the alive beams compete as they are
            for k in range(beam):
                if scores[b, k] > float("-inf"):
                    length = len(hyps[b][k])
                    finals[b].append((scores[b, k].item() / max(length, 1) ** length_penalty, hyps[b][k]))
        results.append(max(finals[b], key=lambda item: item[0])[1] if finals[b] else [])
    return results
