"""The Transformer's masks and the decoders, on small random models."""

import torch

from fedq.model import Transformer, TransformerShape
from fedq.model.decoding import beam_search, greedy_decode

BOS, EOS, PAD = 2, 3, 0


def small_model(seed: int = 0, vocab: int = 40) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerShape(vocab_size=vocab, d_model=32, n_heads=4, ffn_dim=64, enc_layers=2, dec_layers=2, dropout=0.0, max_positions=256, pad_id=0)).eval()


def test_decoder_does_not_look_ahead():
    model = small_model()
    src = torch.randint(4, 40, (2, 7))
    tgt = torch.randint(4, 40, (2, 9))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(4, 40, (2, 4))
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_source_padding_is_ignored():
    model = small_model()
    src = torch.randint(4, 40, (1, 6))
    padded = torch.cat([src, torch.full((1, 5), PAD)], dim=1)
    tgt = torch.randint(4, 40, (1, 4))
    with torch.no_grad():
        assert torch.allclose(model(src, tgt), model(padded, tgt), atol=1e-5)


def test_cached_and_uncached_greedy_agree():
    model = small_model(1)
    src = torch.randint(4, 40, (6, 8))
    src[2, 5:] = PAD
    cached = greedy_decode(model, src, BOS, EOS, max_len=25, use_cache=True)
    uncached = greedy_decode(model, src, BOS, EOS, max_len=25, use_cache=False)
    assert cached == uncached
    assert all(len(ids) <= 25 for ids in cached)


def test_incremental_logits_match_full_forward():
    model = small_model(2)
    src = torch.randint(4, 40, (3, 5))
    tgt = torch.randint(4, 40, (3, 6))
    with torch.no_grad():
        full = model(src, tgt)
        memory, mask = model.encode(src)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, i : i + 1], memory, mask, cache, offset=i) for i in range(tgt.size(1))]
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def sequence_logprob(model: Transformer, src: torch.Tensor, ids: list[int]) -> float:
    tgt = torch.tensor([[BOS] + ids + [EOS]])
    with torch.no_grad():
        logp = torch.log_softmax(model(src, tgt[:, :-1]), dim=-1)
    return float(logp[0].gather(1, tgt[0, 1:, None]).sum())


def test_beam_search_finds_at_least_as_likely_output_as_greedy():
    model = small_model(3, vocab=12)
    for seed in range(5):
        torch.manual_seed(seed)
        src = torch.randint(4, 12, (1, 6))
        greedy = greedy_decode(model, src, BOS, EOS, max_len=10)[0]
        # greedy's output (+EOS) is within the beam's search space of 20 tokens
        beam = beam_search(model, src, BOS, EOS, max_len=20, beam=5, length_penalty=0.0)[0]
        assert sequence_logprob(model, src, beam) >= sequence_logprob(model, src, greedy) - 1e-4
