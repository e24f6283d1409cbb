"""Training checkpoints: a folder with everything needed to rebuild and re-score a model.

    model.safetensors   latent (QAT) weights and quantizer parameters
    config.yaml         the resolved run config
    tokenizer.model     the SentencePiece model the weights were trained with
    meta.json           shape, tokenizer fingerprint, SHA-256 of the weights, deployed size, scores, the
                        environment it was trained in (fedq.environment)
    model.fedq          the packed deployed form (what evaluation runs; carries its own checksum)

Every file is written atomically, and every checkpoint (mid-run, interrupted
or final) holds all five, so ``fedq.evaluate`` accepts any of them. The
weights are checked against their SHA-256 when they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedq.config import FedqConfig, config_to_yaml, read_config_file
from fedq.data.tokenizer import SubwordTokenizer
from fedq.environment import describe_environment
from fedq.errors import FedqError
from fedq.files import atomic_write
from fedq.model.transformer import Transformer
from fedq.quant.deployed import save_deployed

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.model"
META = "meta.json"
DEPLOYED = "model.fedq"


class CheckpointError(FedqError):
    pass


def deployed_metadata(cfg: FedqConfig, tokenizer: SubwordTokenizer) -> dict:
    """What a deployed file says about itself besides its tensors."""
    return {"tokenizer_fingerprint": tokenizer.fingerprint, "quant": asdict(cfg.quant)}


def pack_model(model: Transformer, path: Path, cfg: FedqConfig, tokenizer: SubwordTokenizer) -> dict:
    """Write the deployed file; return its size report as a dict."""
    return asdict(save_deployed(model, path, deployed_metadata(cfg, tokenizer)))


def save_checkpoint(
    folder: str | Path,
    model: Transformer,
    cfg: FedqConfig,
    tokenizer: SubwordTokenizer,
    meta: dict | None = None,
) -> Path:
    """Write the whole checkpoint folder; ``meta`` (steps, loss, ...) goes into meta.json."""
    folder = Path(folder)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    weights = save(state)
    atomic_write(folder / WEIGHTS, weights)
    atomic_write(folder / CONFIG, config_to_yaml(cfg))
    tokenizer.save(folder / TOKENIZER)
    deployed_size = pack_model(model, folder / DEPLOYED, cfg, tokenizer)
    full_meta = {
        "shape": model.shape_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "deployed_size": deployed_size,
        "environment": describe_environment(cfg),
    }
    full_meta.update(meta or {})
    atomic_write(folder / META, json.dumps(full_meta, indent=2))
    return folder


def update_meta(folder: str | Path, **values: object) -> None:
    path = Path(folder) / META
    meta = json.loads(path.read_text())
    meta.update(values)
    atomic_write(path, json.dumps(meta, indent=2))


def checkpoint_folder(path: str | Path) -> Path:
    """Accept the folder or any file inside it."""
    path = Path(os.path.expanduser(str(path)))
    folder = path if path.is_dir() else path.parent
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a folder with {WEIGHTS})")
    return folder


@dataclass
class Checkpoint:
    folder: Path
    config: FedqConfig
    tokenizer: SubwordTokenizer
    meta: dict

    def weights_bytes(self) -> bytes:
        """The weights file, checked against the SHA-256 it was saved with."""
        path = self.folder / WEIGHTS
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"cannot read {path}: {err.strerror}") from None
        if hashlib.sha256(data).hexdigest() != self.meta.get("weights_sha256"):
            raise CheckpointError(f"{path} is damaged: its SHA-256 does not match the one in {META}")
        return data

    def state_dict(self) -> dict[str, torch.Tensor]:
        data = self.weights_bytes()
        try:
            return load(data)
        except SafetensorError as err:
            raise CheckpointError(f"cannot read {self.folder / WEIGHTS}: {err}") from None

    @property
    def deployed_path(self) -> Path:
        return self.folder / DEPLOYED


def read_checkpoint(path: str | Path) -> Checkpoint:
    folder = checkpoint_folder(path)
    try:
        config = read_config_file(folder / CONFIG)
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {folder} is incomplete or corrupt: {err}") from None
    tokenizer = SubwordTokenizer.load(folder / TOKENIZER)
    if tokenizer.fingerprint != meta.get("tokenizer_fingerprint"):
        raise CheckpointError(f"checkpoint {folder}: {TOKENIZER} is not the vocabulary its weights were trained with")
    checkpoint = Checkpoint(folder, config, tokenizer, meta)
    checkpoint.weights_bytes()  # every file of a checkpoint is checked when it is read, scored or not
    return checkpoint


def check_weights_fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor of a model (``own``: its state dict, on any device, ``meta`` included) is in ``state`` with its
    shape; else a clear error."""
    missing = [key for key in own if key not in state]
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} tensors of this model (first: {missing[0]})")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(state[key].shape)}, this model expects {tuple(tensor.shape)}"
                " (different model preset or vocabulary?)"
            )


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; shape mismatches are a clear error.

    Keys the model does not have (e.g. quantizer steps of a QAT checkpoint loaded
    into another setting) are skipped and returned; missing keys are an error.
    """
    own = model.state_dict()
    check_weights_fit(own, state, source)
    model.load_state_dict({key: state[key] for key in own}, strict=True)
    return [key for key in state if key not in own]
