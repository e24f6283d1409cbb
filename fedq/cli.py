"""What every command-line entry point shares: config conversion, errors, output."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedq.config import FedqConfig


def to_config(cfg: DictConfig) -> FedqConfig:
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def run_dir() -> Path:
    """The Hydra run directory (outputs/DATE/TIME), or the current one outside Hydra."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def run_with_user_errors(main: Callable[[FedqConfig], None], cfg: DictConfig) -> None:
    """Run ``main``; a bad input (any ValueError / missing file) is one line on stderr, exit 2."""
    try:
        main(to_config(cfg))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
