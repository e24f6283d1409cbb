"""Score a model the way it would ship: pack it, load the packed file, translate with that."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from fedq.checkpoint import DEPLOYED
from fedq.config import FedqConfig
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer
from fedq.evaluation import BleuResult, evaluate_bleu
from fedq.model.transformer import Transformer
from fedq.quant.deployed import load_deployed, save_deployed


def pack_model(model: Transformer, path: Path, cfg: FedqConfig, tokenizer: SubwordTokenizer) -> dict:
    """Write the deployed file; return its size report as a dict."""
    size = save_deployed(
        model,
        path,
        {"tokenizer_fingerprint": tokenizer.fingerprint, "quant": asdict(cfg.quant), "model_preset": cfg.model.preset},
    )
    return asdict(size)


def score_file(
    path: Path,
    tokenizer: SubwordTokenizer,
    splits: dict[str, list[tuple[str, str]]],
    cfg: FedqConfig,
    device: torch.device,
    out_dir: Path | None = None,
) -> dict[str, BleuResult]:
    """BLEU of the packed model at ``path`` on each split; hypotheses saved beside it."""
    model, meta = load_deployed(path, device)
    if meta.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint):
        raise ValueError(f"{path} was packed for another vocabulary than the tokenizer given")
    results = {}
    for split, pairs in splits.items():
        bleu, hypotheses = evaluate_bleu(model, tokenizer, pairs, cfg.decode, device)
        results[split] = bleu
        if out_dir is not None:
            (out_dir / f"{split}.hyp.txt").write_text("\n".join(hypotheses) + "\n")
    return results


def score_deployed(
    model: Transformer,
    folder: Path,
    tokenizer: SubwordTokenizer,
    corpus: ParallelCorpus,
    cfg: FedqConfig,
    device: torch.device,
) -> dict:
    """Pack ``model`` into ``folder``, then BLEU of the packed form on valid and test."""
    path = folder / DEPLOYED
    size = pack_model(model, path, cfg, tokenizer)
    print(
        f"deployed file {path}: {size['file_bytes'] / 1e6:.3f} MB "
        f"(fp32 weights {size['fp32_bytes'] / 1e6:.3f} MB, {size['fp32_bytes'] / size['file_bytes']:.1f}x smaller)",
        flush=True,
    )
    results = score_file(path, tokenizer, {"valid": corpus.valid, "test": corpus.test}, cfg, device, folder)
    for split, bleu in results.items():
        print(f"{split} (deployed form): {bleu}", flush=True)
    return {
        "deployed_size": size,
        "valid_bleu": results["valid"].score,
        "test_bleu": results["test"].score,
        "bleu_signature": results["test"].signature,
    }
