"""The Transformer's masks and the decoders, on small random models."""

import torch

from fedq.model import ModelConfig, Transformer
from fedq.model.decoding import beam_search, greedy_decode

BOS, EOS, PAD = 2, 3, 0


def small_model(seed: int = 0, vocab: int = 40) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(d_model=32, n_heads=4, ffn_dim=64, enc_layers=2, dec_layers=2, dropout=0.0, max_positions=256), vocab, 0).eval()


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


def fourier_model(vocab: int = 60) -> Transformer:
    shape = ModelConfig(d_model=32, n_heads=4, ffn_dim=64, enc_layers=2, dec_layers=2, dropout=0.0, max_positions=256,
                        mixer="fourier")
    return Transformer(shape, vocab, 0).eval()


def test_fourier_mixing_is_blind_to_the_padding_of_other_sentences():
    torch.manual_seed(0)
    model = fourier_model()
    short, long = torch.randint(4, 60, (1, 5)), torch.randint(4, 60, (1, 11))
    batch = torch.zeros(2, 11, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    alone, _ = model.encode(short)
    together, _ = model.encode(batch)
    torch.testing.assert_close(together[0, :5], alone[0], atol=1e-5, rtol=1e-5)
    assert not any("self_attn." in name for name, _ in model.encoder_layers.named_parameters())  # no encoder attention
    assert any("self_attn." in name for name, _ in model.decoder_layers.named_parameters())  # the decoder keeps it


def test_fourier_mixing_is_the_real_part_of_an_orthonormal_2d_dft():
    from fedq.model.transformer import FourierMixing

    x = torch.randn(1, 6, 8)
    mixed = FourierMixing()(x, torch.ones(1, 1, 1, 6, dtype=torch.bool))
    torch.testing.assert_close(mixed, torch.fft.fft2(x, norm="ortho").real)
