"""Re-score a checkpoint: ``python -m fedq.evaluate ckpt=PATH [decode.beam=5]``.

Always scores the packed deployed file (``model.fedq``) of the checkpoint, on
the valid and test splits of the corpus the checkpoint was trained on.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fedq.checkpoint import CheckpointError, read_checkpoint
from fedq.cli import run_with_user_errors
from fedq.config import CONFIG_SOURCE, FedqConfig, register_configs
from fedq.data import load_corpus
from fedq.errors import ConfigError
from fedq.scoring import score_file
from fedq.task import configure_threads, resolve_device


def evaluate(cfg: FedqConfig) -> dict[str, float]:
    if not cfg.ckpt:
        raise ConfigError("give the checkpoint to score: python -m fedq.evaluate ckpt=PATH")
    configure_threads(cfg.threads)
    checkpoint = read_checkpoint(cfg.ckpt)
    if not checkpoint.deployed_path.is_file():
        raise CheckpointError(f"{checkpoint.folder} has no deployed file {checkpoint.deployed_path.name}")
    corpus = load_corpus(checkpoint.config.data)
    device = resolve_device(cfg.device)
    results = score_file(
        checkpoint.deployed_path, checkpoint.tokenizer, {"valid": corpus.valid, "test": corpus.test}, cfg.decode, device
    )
    scores = {}
    for split, bleu in results.items():
        saved = checkpoint.meta.get(f"{split}_bleu")
        note = f" (saved at training: {saved:.2f})" if saved is not None else ""
        print(f"{split} (deployed form): {bleu}{note}", flush=True)
        scores[split] = bleu.score
    return scores


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_with_user_errors(evaluate, cfg)


register_configs()

if __name__ == "__main__":
    main()
