"""Translate, score with sacreBLEU, and score a model the way it would ship.

``score_file`` loads a packed deployed file and translates with what was
loaded; ``score_checkpoint`` does so for a checkpoint folder. Every BLEU fedq
reports is of the packed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sacrebleu
import torch

from fedq.checkpoint import read_checkpoint
from fedq.config import DecodeConfig
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer
from fedq.files import atomic_write
from fedq.model.decoding import beam_search, greedy_decode
from fedq.model.transformer import Transformer
from fedq.quant.deployed import DeployedFormatError, DeployedSize, load_deployed


@dataclass(frozen=True)
class BleuResult:
    score: float
    signature: str
    sentences: int

    def __str__(self) -> str:
        return f"BLEU {self.score:.2f} ({self.sentences} sentences; {self.signature})"


def translate(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    sources: Sequence[str],
    decode: DecodeConfig,
    device: torch.device,
) -> list[str]:
    """Detokenized translations, batched by source length, returned in input order."""
    model.eval()
    max_src = model.shape.max_positions
    # An empty source would be an all-pad row (attention over nothing): give it one unk.
    encoded = [tokenizer.encode(text)[:max_src] or [tokenizer.unk_id] for text in sources]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    for start in range(0, len(order), decode.batch_size):
        index = order[start : start + decode.batch_size]
        width = max(1, max(len(encoded[i]) for i in index))
        src = torch.full((len(index), width), tokenizer.pad_id, dtype=torch.long)
        for row, i in enumerate(index):
            src[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
        src = src.to(device)
        max_len = int(decode.max_len_a * width + decode.max_len_b)
        if decode.beam > 1:
            ids = beam_search(model, src, tokenizer.bos_id, tokenizer.eos_id, max_len, decode.beam, decode.length_penalty)
        else:
            ids = greedy_decode(model, src, tokenizer.bos_id, tokenizer.eos_id, max_len)
        for row, i in enumerate(index):
            outputs[i] = tokenizer.decode(ids[row])
    return outputs


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
    splits: dict[str, Sequence[tuple[str, str]]],
    decode: DecodeConfig,
    device: torch.device,
    out_dir: Path | None = None,
) -> dict[str, BleuResult]:
    """BLEU of the packed model at ``path`` on each split; hypotheses saved in ``out_dir``."""
    model, meta = load_deployed(path, device)
    if meta.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint):
        raise DeployedFormatError(f"{path} was packed for another vocabulary than the tokenizer given")
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
    print(f"deployed file {checkpoint.deployed_path}: {DeployedSize(**size).describe()}", flush=True)
    splits = {"valid": corpus.valid, "test": corpus.test}
    results = score_file(checkpoint.deployed_path, checkpoint.tokenizer, splits, decode, device, checkpoint.folder)
    for split, bleu in results.items():
        print(f"{split} (deployed form): {bleu}", flush=True)
    return {
        "valid_bleu": results["valid"].score,
        "test_bleu": results["test"].score,
        "bleu_signature": results["test"].signature,
        "deployed_size": size,
    }
