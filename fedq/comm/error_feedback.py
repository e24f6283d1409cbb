"""Error feedback (EF-SGD) for biased codecs such as sign and top-k.

What a codec drops in one round is kept in a residual and added to the next
round's update, so nothing is lost over time, only delayed.
"""

from __future__ import annotations

import numpy as np

from fedq.comm.codecs import Stratum, UpdateCodec
from fedq.comm.errors import CodecError


def encode_with_feedback(
    codec: UpdateCodec, vector: np.ndarray, residual: np.ndarray | None, rng: np.random.Generator,
    stratum: Stratum | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Encode ``vector + residual``; return the payload and the new residual (what was not sent)."""
    corrected = np.asarray(vector, np.float32)
    if residual is not None:
        if residual.shape != corrected.shape:
            raise CodecError(
                f"error-feedback residual has shape {residual.shape}, update has {corrected.shape}"
            )
        corrected = corrected + residual
    arrays = codec.encode(corrected, rng, stratum)
    return arrays, corrected - codec.decode(arrays, corrected.size)
