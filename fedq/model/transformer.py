"""A pre-norm Transformer encoder-decoder for translation, read top to bottom.

The encoder mixes tokens with self-attention, or (``model.mixer=fourier``) with
FNet's parameter-free Fourier transform; the decoder always attends.

Quantization never appears here as a flag: ``fedq.quant`` swaps the
``nn.Linear`` layers and the ``TiedEmbedding`` for quantized subclasses by
module name (attention projections live under ``*_attn``).

Decoding is incremental: each decoder layer keeps a key/value cache in a plain
dict per layer (``DecoderCache``), so one decoding step costs one position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from fedq.errors import ConfigError

LayerCache = dict[str, torch.Tensor]
DecoderCache = list[LayerCache]


MIXERS = ("attention", "fourier")


@dataclass
class ModelConfig:
    """The network's shape (``cfg.model``); with the vocabulary it is all that is needed to rebuild it."""

    d_model: int = 128
    n_heads: int = 4
    ffn_dim: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    dropout: float = 0.1
    max_positions: int = 256
    mixer: str = "attention"  # the encoder's token mixing: attention | fourier (FNet; the decoder keeps attention)

    def describe(self) -> str:
        return f"{self.enc_layers}+{self.dec_layers} layers, d={self.d_model}, {self.n_heads} heads, ffn {self.ffn_dim}"


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise a one-line ConfigError for a shape that cannot be built."""
    for name in ("d_model", "n_heads", "ffn_dim", "max_positions", "enc_layers", "dec_layers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"model.{name}={getattr(cfg, name)} must be >= 1")
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout={cfg.dropout} must be in [0, 1)")
    if cfg.mixer not in MIXERS:
        raise ConfigError(f"model.mixer={cfg.mixer!r} is unknown; choose one of {', '.join(MIXERS)}")


class TiedEmbedding(nn.Module):
    """Token embedding shared by encoder input, decoder input and output projection."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * d_model**-0.5)
        self.scale = math.sqrt(d_model)

    def weight_in_use(self) -> torch.Tensor:
        """The weight the forward pass sees; quantized subclasses override this."""
        return self.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight_in_use()) * self.scale

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight_in_use())


def sinusoidal_positions(max_positions: int, d_model: int) -> torch.Tensor:
    position = torch.arange(max_positions).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        attend_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
        cache_prefix: str = "",
    ) -> torch.Tensor:
        """Attention of ``query`` over ``key_value`` (self-attention when None).

        ``attend_mask`` is boolean, True where attending is allowed, broadcastable
        to [batch, heads, q_len, k_len]. With a ``cache``, self-attention appends
        the new keys/values to it, and cross-attention computes them only once.
        """
        q = self._split(self.q_proj(query))
        if key_value is None:  # self-attention
            k, v = self._split(self.k_proj(query)), self._split(self.v_proj(query))
            if cache is not None:
                if cache_prefix + "k" in cache:
                    k = torch.cat([cache[cache_prefix + "k"], k], dim=2)
                    v = torch.cat([cache[cache_prefix + "v"], v], dim=2)
                cache[cache_prefix + "k"], cache[cache_prefix + "v"] = k, v
        elif cache is not None and cache_prefix + "k" in cache:
            k, v = cache[cache_prefix + "k"], cache[cache_prefix + "v"]
        else:
            k, v = self._split(self.k_proj(key_value)), self._split(self.v_proj(key_value))
            if cache is not None:
                cache[cache_prefix + "k"], cache[cache_prefix + "v"] = k, v
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attend_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attend_mask is None,
        )
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class FourierMixing(nn.Module):
    """FNet's token mixing (Lee-Thorp et al., 2022): the real part of a 2-D DFT over sequence and hidden size.

    Parameter-free. Each sentence is transformed over its own length (orthonormal
    DFT, so magnitudes are kept), never over its padding: a sentence mixes the same
    whatever the other sentences of its batch are, and padded positions stay zero.
    """

    def forward(self, x: torch.Tensor, attend_mask: torch.Tensor) -> torch.Tensor:
        lengths = attend_mask.reshape(x.size(0), -1).sum(dim=1)
        out = torch.zeros_like(x)
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero(as_tuple=True)[0]
            mixed = torch.fft.fft2(x[rows, :length].float(), dim=(-2, -1), norm="ortho").real
            out[rows, :length] = mixed.to(x.dtype)
        return out


class EncoderLayer(nn.Module):
    def __init__(self, shape: ModelConfig) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(shape.d_model)
        if shape.mixer == "fourier":
            self.mixer: nn.Module = FourierMixing()
        else:
            self.self_attn = MultiHeadAttention(shape.d_model, shape.n_heads, shape.dropout)
        self.ffn_norm = nn.LayerNorm(shape.d_model)
        self.ffn = FeedForward(shape.d_model, shape.ffn_dim, shape.dropout)
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_norm(x)
        mixed = self.mixer(h, src_mask) if hasattr(self, "mixer") else self.self_attn(h, attend_mask=src_mask)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, shape: ModelConfig) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(shape.d_model)
        self.self_attn = MultiHeadAttention(shape.d_model, shape.n_heads, shape.dropout)
        self.cross_attn_norm = nn.LayerNorm(shape.d_model)
        self.cross_attn = MultiHeadAttention(shape.d_model, shape.n_heads, shape.dropout)
        self.ffn_norm = nn.LayerNorm(shape.d_model)
        self.ffn = FeedForward(shape.d_model, shape.ffn_dim, shape.dropout)
        self.dropout = nn.Dropout(shape.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        # With a cache, x holds only the newest position: it may attend to all cached ones.
        causal = cache is None
        h = self.self_attn(self.self_attn_norm(x), causal=causal, cache=cache, cache_prefix="self_")
        x = x + self.dropout(h)
        h = self.cross_attn(
            self.cross_attn_norm(x), memory, attend_mask=src_mask, cache=cache, cache_prefix="cross_"
        )
        x = x + self.dropout(h)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    positions: torch.Tensor  # a buffer

    def __init__(self, shape: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.shape = shape
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.embed = TiedEmbedding(vocab_size, shape.d_model)
        self.register_buffer(
            "positions", sinusoidal_positions(shape.max_positions, shape.d_model), persistent=False
        )
        self.embed_dropout = nn.Dropout(shape.dropout)
        # typed as the layers they hold (nn.ModuleList is not generic); registered as submodules all the same
        self.encoder_layers = cast("Sequence[EncoderLayer]", nn.ModuleList(EncoderLayer(shape) for _ in range(shape.enc_layers)))
        self.encoder_norm = nn.LayerNorm(shape.d_model)
        self.decoder_layers = cast("Sequence[DecoderLayer]", nn.ModuleList(DecoderLayer(shape) for _ in range(shape.dec_layers)))
        self.decoder_norm = nn.LayerNorm(shape.d_model)
        for name, param in self.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(param)

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = tokens.size(1)
        if offset + length > self.shape.max_positions:
            raise ValueError(
                f"sequence of {offset + length} tokens exceeds max_positions={self.shape.max_positions}"
            )
        x = self.embed(tokens) + self.positions[offset : offset + length]
        return self.embed_dropout(x)

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """[batch, 1, 1, src_len] boolean: True at real (non-pad) source tokens."""
        return (src != self.pad_id)[:, None, None, :]

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src_mask = self.source_mask(src)
        x = self._embed(src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Logits for ``tgt_in``; with ``cache``, tgt_in is the next token(s) at ``offset``."""
        x = self._embed(tgt_in, offset)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, src_mask, None if cache is None else cache[i])
        return self.embed.project(self.decoder_norm(x))

    def shape_dict(self) -> dict:
        """The shape with the vocabulary, as checkpoints and deployed files store it."""
        return {**asdict(self.shape), "vocab_size": self.vocab_size, "pad_id": self.pad_id}

    @staticmethod
    def shape_from_dict(values: dict) -> ModelConfig:
        """The :class:`ModelConfig` part of a :meth:`shape_dict` (a missing or unknown key is a KeyError or TypeError)."""
        return ModelConfig(**{k: v for k, v in values.items() if k not in ("vocab_size", "pad_id")})

    @classmethod
    def from_shape_dict(cls, values: dict) -> Transformer:
        """The inverse of :meth:`shape_dict`."""
        return cls(cls.shape_from_dict(values), int(values["vocab_size"]), int(values["pad_id"]))

    def new_cache(self) -> DecoderCache:
        return [{} for _ in self.decoder_layers]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)
