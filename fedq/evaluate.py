"""Re-score a checkpoint: ``python -m fedq.evaluate ckpt=PATH [decode.beam=5]``.

Always scores the packed deployed file (``model.fedq``) of the checkpoint with
its own tokenizer. What it is scored on:

- by default, the valid and test splits of the corpus the checkpoint was trained on;
- ``data.*`` overrides on the command line change that corpus (``data.test_split=...``,
  ``data.max_eval_pairs=...``), and a ``data=...`` group choice scores another corpus
  (e.g. ``data=textdir data.dir=... data.test_split=test_2017_flickr``);
- ``eval.src=FILE eval.ref=FILE`` scores your own parallel files.

Settings that cannot apply to a trained model (``model.*``, ``quant.*``, training and
federation settings) are refused with one line, as every setting a command would ignore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedq.checkpoint import CheckpointError, read_checkpoint
from fedq.cli import override_key, refuse_unused, run_entry_point, run_with_user_errors
from fedq.config import CONFIG_SOURCE, FedqConfig, register_configs
from fedq.data.corpora import load_corpus
from fedq.data.corpus import Pairs
from fedq.data.settings import DataConfig
from fedq.data.textdir import read_parallel_files
from fedq.errors import ConfigError
from fedq.scoring import score_file
from fedq.task import configure_threads, resolve_device

log = logging.getLogger("fedq.evaluate")  # not __name__: run as __main__

USED_PREFIXES = ("ckpt", "decode", "eval", "device", "threads", "data", "seed", "hydra")


def ignored_overrides(overrides: Sequence[str]) -> list[str]:
    """The command-line overrides that evaluate does not use (the checkpoint fixes them)."""
    keys = [override_key(override) for override in overrides]
    return [o for o, key in zip(overrides, keys) if key.split(".", 1)[0].split("/", 1)[0] not in USED_PREFIXES]


def eval_data_config(saved: DataConfig, cfg: FedqConfig, overrides: Sequence[str]) -> DataConfig:
    """The checkpoint's corpus, changed by the command line's ``data.*`` overrides, or replaced by a ``data=`` choice."""
    keys = [override_key(override) for override in overrides]
    if "data" in keys:
        return cfg.data
    changes = [o.lstrip("+") for o, key in zip(overrides, keys) if key.startswith("data.")]
    if not changes:
        return saved
    merged = OmegaConf.merge(OmegaConf.structured(saved), OmegaConf.from_dotlist([c.removeprefix("data.") for c in changes]))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def evaluation_sets(cfg: FedqConfig, saved: DataConfig, overrides: Sequence[str]) -> tuple[str, dict[str, Pairs]]:
    """(a description, {split name: pairs}) of what to score."""
    if cfg.eval.src is not None and cfg.eval.ref is not None:
        pairs = read_parallel_files(Path(cfg.eval.src).expanduser(), Path(cfg.eval.ref).expanduser())
        return f"eval.src={cfg.eval.src} eval.ref={cfg.eval.ref} ({len(pairs)} pairs)", {"eval": pairs}
    data = eval_data_config(saved, cfg, overrides)
    if (data.src, data.tgt) != (saved.src, saved.tgt):
        raise ConfigError(f"the checkpoint translates {saved.src}->{saved.tgt}, not {data.src}->{data.tgt}")
    corpus = load_corpus(data)
    replaced = "data" in [override_key(override) for override in overrides]
    source = "the corpus of the command line" if replaced else "the checkpoint's corpus"
    text = (f"{source}: {corpus.name} {corpus.src_lang}->{corpus.tgt_lang}, valid {len(corpus.valid)} / test "
            f"{len(corpus.test)} pairs")
    return text, {"valid": corpus.valid, "test": corpus.test}


def evaluate(cfg: FedqConfig, overrides: Sequence[str] = ()) -> dict[str, float]:
    if not cfg.ckpt:
        raise ConfigError("give the checkpoint to score: python -m fedq.evaluate ckpt=PATH")
    refuse_unused(cfg, "evaluate")
    configure_threads(cfg.threads)
    checkpoint = read_checkpoint(cfg.ckpt)
    if not checkpoint.deployed_path.is_file():
        raise CheckpointError(f"{checkpoint.folder} has no deployed file {checkpoint.deployed_path.name}")
    if ignored := ignored_overrides(overrides):
        raise ConfigError(f"fedq.evaluate does not use {' '.join(ignored)}: the checkpoint fixes the model, its "
                          "quantization and training (it takes ckpt=, data.*, eval.*, decode.*, device, threads)")
    description, sets = evaluation_sets(cfg, checkpoint.config.data, overrides)
    log.info(f"scoring {checkpoint.deployed_path} on {description}")
    results = score_file(checkpoint.deployed_path, checkpoint.tokenizer, sets, cfg.decode, resolve_device(cfg.device))
    scores = {}
    for split, bleu in results.items():
        saved_score = checkpoint.meta.get(f"{split}_bleu") if description.startswith("the checkpoint's") else None
        note = f" (saved at training: {saved_score:.2f})" if saved_score is not None else ""
        log.info(f"{split} (deployed form): {bleu}{note}")
        scores[split] = bleu.score
    return scores


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)
    run_with_user_errors(lambda config: evaluate(config, overrides), cfg)


register_configs()

if __name__ == "__main__":
    run_entry_point(main)
