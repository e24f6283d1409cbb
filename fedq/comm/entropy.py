"""Lossless entropy coding of integer codes: rANS (``constriction``) with the symbols' own histogram.

A payload carries the histogram (one uint32 count per symbol of the alphabet,
the lowest symbol's value in a small header) and the coder's uint32 words; both
sides build the same categorical model from the counts, so the decode is exact.
A stream that does not decode to exactly ``count`` symbols with all of its words
used is refused.
"""

from __future__ import annotations

import numpy as np

from fedq.comm.errors import CodecError

MAX_ALPHABET = 1 << 16


def ans_encode(codes: np.ndarray) -> list[np.ndarray]:
    """``[header int32 (lowest code, alphabet size), counts uint32, words uint32]`` for integer ``codes``."""
    import constriction

    codes = np.asarray(codes).ravel().astype(np.int64)
    if codes.size == 0:
        return [np.zeros(2, np.int32), np.zeros(0, np.uint32), np.zeros(0, np.uint32)]
    low = int(codes.min())
    symbols = (codes - low).astype(np.int32)
    counts = np.bincount(symbols).astype(np.uint32)
    if counts.size > MAX_ALPHABET:
        raise CodecError(f"entropy coding: {counts.size} distinct code values, more than {MAX_ALPHABET}")
    header = np.array([low, counts.size], np.int32)
    if counts.size == 1:  # every code is `low`: nothing to code (and constriction refuses a one-symbol model)
        return [header, counts, np.zeros(0, np.uint32)]
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(counts))
    return [header, counts, coder.get_compressed()]


def ans_decode(header: np.ndarray, counts: np.ndarray, words: np.ndarray, count: int, codec: str) -> np.ndarray:
    """The ``count`` integer codes of :func:`ans_encode`'s arrays (CodecError for a stream that does not match)."""
    import constriction

    if header.dtype != np.int32 or header.shape != (2,) or counts.dtype != np.uint32 or words.dtype != np.uint32:
        raise CodecError(f"{codec} payload: the entropy-coded stream has the wrong array types")
    low, size = int(header[0]), int(header[1])
    if count == 0:
        return np.zeros(0, np.int64)
    if size != counts.size or not 0 < size <= MAX_ALPHABET or int(counts.sum(dtype=np.uint64)) != count:
        raise CodecError(f"{codec} payload: its symbol counts do not add up to the {count} values of the model")
    if size == 1:
        if words.size:
            raise CodecError(f"{codec} payload: the entropy-coded stream does not hold exactly its {count} values")
        return np.full(count, low, np.int64)
    coder = constriction.stream.stack.AnsCoder(words)
    try:
        symbols = coder.decode(_model(counts), count)
    except (ValueError, RuntimeError) as err:
        raise CodecError(f"{codec} payload: the entropy-coded stream does not decode ({err})") from None
    if not coder.is_empty():
        raise CodecError(f"{codec} payload: the entropy-coded stream does not hold exactly its {count} values")
    return symbols.astype(np.int64) + low


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64) / float(counts.sum()), perfect=False)
