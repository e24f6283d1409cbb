"""What every command-line entry point shares: config conversion, errors, output."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedq.config import FedqConfig, validate_config
from fedq.errors import FedqError


def to_config(cfg: DictConfig) -> FedqConfig:
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def run_dir() -> Path:
    """The Hydra run directory (outputs/DATE/TIME), or the current one outside Hydra."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_with_user_errors(main: Callable[[FedqConfig], object], cfg: DictConfig) -> None:
    """Validate the config, then run ``main``.

    A user error (any :class:`FedqError`) is one line on stderr and exit status 2;
    any other exception is a bug and keeps its traceback. SIGTERM is handled like
    Ctrl-C: the entry point saves what it has and exits with status 130.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config = to_config(cfg)
        validate_config(config)
        main(config)
    except FedqError as err:
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
