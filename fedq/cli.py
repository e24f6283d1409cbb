"""What every command-line entry point shares: the command line checked, config conversion, errors, output."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from fedq.config import CONFIG_MODULE, FedqConfig, compose_config, settings_by_key, validate_config
from fedq.errors import ConfigError, FedqError
from fedq.files import describe_write_error
from fedq.logs import configure as configure_logging
from fedq.run_folder import LOCK_FILE, refuse_overwrite

log = logging.getLogger(__name__)


def config_groups() -> set[str]:
    """The config groups a command line may choose (``model=small``, ``+experiment=multi30k_fl``)."""
    return {entry.name for entry in files(CONFIG_MODULE).iterdir() if entry.is_dir() and not entry.name.startswith("_")}


def override_key(override: str) -> str:
    """The setting or group a command-line override names: ``+fl.rounds=3`` -> ``fl.rounds``."""
    return override.lstrip("+~").split("=", 1)[0]


def check_overrides(arguments: Sequence[str]) -> None:
    """A command line's overrides, checked the way the run will compose them: a typo, a wrong type or a key fedq
    does not know (whatever its ``+`` prefix) is one ConfigError line. A sweep (``-m a=1,2``) is checked with the
    first value of each list; every run of it is validated again when it starts."""
    texts = [a for a in arguments if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    if not texts:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(texts)
    except HydraException as err:
        raise ConfigError(f"cannot read the command line: {str(err).strip().splitlines()[0]}") from None
    known, groups, plain = set(settings_by_key(FedqConfig())), config_groups(), []
    for override in parsed:
        key = override.key_or_group
        if key not in known and key.split("/")[0] not in groups and not any(k.startswith(key + ".") for k in known):
            raise ConfigError(f"{key} is not a fedq setting (see --help for the groups, --cfg job for every setting)")
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
        else:
            value = override.get_value_element_as_str()
        plain.append(f"{'+' if override.is_add() else ''}{key}={value}")
    cfg = compose_config(plain)
    if "fl.fraction" in [o.key_or_group for o in parsed] and cfg.fl.clients_per_round > 0:
        raise ConfigError(f"fl.fraction={cfg.fl.fraction:g} is not used: fl.clients_per_round={cfg.fl.clients_per_round} "
                          "sets the round's size (give one of them)")


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
    Ctrl-C: the entry point saves what it has and exits with status 130. A results
    folder this command created and left with nothing but Hydra's own files (a
    refused run, a ``resume=`` that wrote into the run's folder) is removed.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    configure_logging()
    try:
        config = to_config(cfg)
        validate_config(config)
        main(config)
    except FedqError as err:
        log.error(str(err))
        sys.exit(2)
    except KeyboardInterrupt:
        log.info("interrupted")
        sys.exit(130)
    finally:
        if not _RUN_DIR_EXISTED:
            discard_if_unused(run_dir())


_RUN_DIR_EXISTED = True  # whether the results folder existed before this command (run_entry_point says)
HYDRA_OWN = (".hydra", LOCK_FILE)  # with Hydra's job log (NAME.log): what a folder holds that holds no results


def discard_if_unused(folder: Path) -> None:
    """Remove ``folder`` if it holds only Hydra's own files, and the empty folders above it up to ./outputs."""
    try:
        entries = list(folder.iterdir())
        if any(entry.name not in HYDRA_OWN and not (entry.is_file() and entry.suffix == ".log") for entry in entries):
            return
        shutil.rmtree(folder)
        outputs = Path.cwd() / "outputs"
        for parent in folder.parents:
            if not parent.is_relative_to(outputs) or any(parent.iterdir()):
                break
            parent.rmdir()
    except OSError:
        pass  # a folder that cannot be inspected or removed stays: nothing is lost

ENTRY_POINT_SETTINGS = {  # the top-level settings each entry point uses; another one given is refused
    "train": ("init_from",),
    "simulate": ("init_from", "resume"),
    "evaluate": ("ckpt",),
    "deploy": ("ckpt",),
}


def refuse_unused(cfg: FedqConfig, entry_point: str) -> None:
    """``resume=`` for training, ``ckpt=`` for a simulation, ...: a setting this entry point would ignore is one line."""
    for name in ("ckpt", "init_from", "resume"):
        if getattr(cfg, name) is not None and name not in ENTRY_POINT_SETTINGS[entry_point]:
            used = " and ".join(f"{s}=" for s in ENTRY_POINT_SETTINGS[entry_point])
            raise ConfigError(f"{name}= is not used by fedq.{entry_point} (it takes {used})")
    if cfg.report.sinks and entry_point != "simulate":
        raise ConfigError(f"report.sinks is not used by fedq.{entry_point}: the sinks take a federated run's rows")


def check_run_dir(arguments: Sequence[str]) -> None:
    """The results folder Hydra will create (``hydra.run.dir``, else ./outputs) must be writable: one line if not."""
    given = [a.split("=", 1)[1] for a in arguments if a.startswith("hydra.run.dir=")]
    target = Path(given[-1] if given else "outputs").expanduser().absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as err:
        why = describe_write_error(err, target / "metrics.jsonl")
        raise ConfigError(f"{why} (choose another with hydra.run.dir=PATH)") from None


def run_entry_point(hydra_main: Callable[[], None], writes_run: bool = False) -> None:
    """Check the command line (one line and exit 2 on a bad override or an unwritable results folder), then hand it
    to Hydra. ``writes_run``: the command writes a run into its folder (fedq.simulate), so a ``hydra.run.dir`` that
    holds a run already is refused before Hydra writes its own files there (``resume=`` continues a run instead)."""
    global _RUN_DIR_EXISTED
    configure_logging()
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")]
    _RUN_DIR_EXISTED = bool(given) and Path(given[-1]).expanduser().exists()
    try:
        if writes_run and given and not any(a.startswith("resume=") for a in sys.argv[1:]):
            refuse_overwrite(Path(given[-1]).expanduser().absolute())
        check_overrides(sys.argv[1:])
        if not any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in sys.argv[1:]):
            check_run_dir(sys.argv[1:])
    except FedqError as err:
        log.error(str(err))
        sys.exit(2)
    hydra_main()


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
