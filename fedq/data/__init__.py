"""Corpora, tokenizer, partitioning and batching.

``settings`` holds the ``data.*`` and ``partition.*`` settings; ``corpora.load_corpus``
reads any corpus. This package file imports nothing, so that a training loop that
only batches does not load every corpus reader.
"""
