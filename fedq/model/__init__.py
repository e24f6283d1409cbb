"""The translation model and its decoding."""

from fedq.model.transformer import ModelConfig, TiedEmbedding, Transformer

__all__ = ["ModelConfig", "TiedEmbedding", "Transformer"]
