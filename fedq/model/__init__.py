"""The translation model and its decoding."""

from fedq.model.transformer import TiedEmbedding, Transformer, TransformerShape

__all__ = ["TiedEmbedding", "Transformer", "TransformerShape"]
