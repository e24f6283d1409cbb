"""Translate, score with sacreBLEU, and score a model the way it would ship.

``score_file`` loads a packed deployed file and translates with what was
loaded; ``score_checkpoint`` does so for a checkpoint folder. Every BLEU fedq
reports is of the packed form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sacrebleu
import torch

from fedq.checkpoint import read_checkpoint
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer
from fedq.files import atomic_write
from fedq.model.decoding import DecodeConfig, beam_search, greedy_decode
from fedq.model.transformer import Transformer
from fedq.quant.deployed import (
    DeployedFormatError,
    DeployedSize,
    load_deployed,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BleuResult:
    score: float
    signature: str
    sentences: int

    def __str__(self) -> str:
        return f"BLEU {self.score:.2f} ({self.sentences} sentences; {self.signature})"


BatchDecoder = Callable[[list[list[int]], int], list[list[int]]]


def translate_batched(
    sources: Sequence[str], tokenizer: SubwordTokenizer, max_positions: int, decode: DecodeConfig, decode_batch: BatchDecoder
) -> list[str]:
    """The one translate loop of every engine: encode, batch by source length (``decode.batch_size``), let the
    engine's ``decode_batch(source ids, max output length)`` search, detokenize, return in input order."""
    # An empty source would be an all-pad row (attention over nothing): give it one unk.
    encoded = [tokenizer.encode(text)[:max_positions] or [tokenizer.unk_id] for text in sources]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    for start in range(0, len(order), decode.batch_size):
        index = order[start : start + decode.batch_size]
        width = max(len(encoded[i]) for i in index)
        ids = decode_batch([encoded[i] for i in index], min(decode.max_length(width), max_positions - 1))
        for row, i in enumerate(index):
            outputs[i] = tokenizer.decode(ids[row])
    return outputs


def padded(rows: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """Token id rows as one int64 array, right-padded with ``pad_id``."""
    out = np.full((len(rows), max(1, max(len(row) for row in rows))), pad_id, np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def translate(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    sources: Sequence[str],
    decode: DecodeConfig,
    device: torch.device,
) -> list[str]:
    """Detokenized translations with fedq's own greedy or beam search, batched by source length, in input order."""
    model.eval()

    def search(rows: list[list[int]], max_len: int) -> list[list[int]]:
        src = torch.from_numpy(padded(rows, tokenizer.pad_id)).to(device)
        if decode.beam > 1:
            return beam_search(model, src, tokenizer.bos_id, tokenizer.eos_id, max_len, decode.beam, decode.length_penalty)
        return greedy_decode(model, src, tokenizer.bos_id, tokenizer.eos_id, max_len)

    return translate_batched(sources, tokenizer, model.shape.max_positions, decode, search)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> BleuResult:
    """sacreBLEU on detokenized text against the raw references (default 13a tokenization)."""
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return BleuResult(score=score.score, signature=str(metric.get_signature()), sentences=len(hypotheses))


def evaluate_bleu(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    pairs: Sequence[tuple[str, str]],
    decode: DecodeConfig,
    device: torch.device,
) -> tuple[BleuResult, list[str]]:
    hypotheses = translate(model, tokenizer, [src for src, _ in pairs], decode, device)
    return corpus_bleu(hypotheses, [tgt for _, tgt in pairs]), hypotheses


def score_file(
    path: Path,
    tokenizer: SubwordTokenizer,
    splits: Mapping[str, Sequence[tuple[str, str]]],
    decode: DecodeConfig,
    device: torch.device,
    out_dir: Path | None = None,
) -> dict[str, BleuResult]:
    """BLEU of the packed model at ``path`` on each split; hypotheses saved in ``out_dir``."""
    model, meta = load_deployed(path, device)
    if meta.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint):
        raise DeployedFormatError(f"{path} was packed for another vocabulary than the tokenizer given")
    return score_model(model, tokenizer, splits, decode, device, out_dir)


def score_model(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    splits: Mapping[str, Sequence[tuple[str, str]]],
    decode: DecodeConfig,
    device: torch.device,
    out_dir: Path | None = None,
) -> dict[str, BleuResult]:
    results = {}
    for split, pairs in splits.items():
        bleu, hypotheses = evaluate_bleu(model, tokenizer, pairs, decode, device)
        results[split] = bleu
        if out_dir is not None:
            atomic_write(out_dir / f"{split}.hyp.txt", "\n".join(hypotheses) + "\n")
    return results


def score_checkpoint(folder: Path, corpus: ParallelCorpus, decode: DecodeConfig, device: torch.device) -> dict:
    """BLEU on valid and test of the packed file a checkpoint folder holds, and that file's size."""
    checkpoint = read_checkpoint(folder)
    size = checkpoint.meta["deployed_size"]
    log.info(f"deployed file {checkpoint.deployed_path}: {DeployedSize(**size).describe()}")
    splits = {"valid": corpus.valid, "test": corpus.test}
    results = score_file(checkpoint.deployed_path, checkpoint.tokenizer, splits, decode, device, checkpoint.folder)
    for split, bleu in results.items():
        log.info(f"{split} (deployed form): {bleu}")
    return {
        "valid_bleu": results["valid"].score,
        "test_bleu": results["test"].score,
        "bleu_signature": results["test"].signature,
        "deployed_size": size,
    }
