"""The settings of a run's entries: a strategy's, defence's or attack's own ``fl.*`` setting, given for a run whose
entries do not read it, is refused, so that no value is silently ignored.

Each entry names the fields of ``fl.*`` it reads as ``settings`` (``bucketing``: ``bucket_size``); a field that some
built-in entry claims is that entry's, and must keep its default unless one of the run's entries reads it. The
settings stay fields of ``fl.*`` (rather than a dataclass per entry) because every saved run's config, resume check
and report row names them there.
"""

from __future__ import annotations

import dataclasses

from fedq.errors import ConfigError
from fedq.fl.attacks import ATTACKS
from fedq.fl.defences import DEFENCES
from fedq.fl.settings import FLConfig
from fedq.fl.strategies import STRATEGIES
from fedq.registry import ClassRegistry

KINDS: tuple[tuple[ClassRegistry, str], ...] = ((STRATEGIES, "strategy"), (DEFENCES, "defence"), (ATTACKS, "attack"))


def entry_settings() -> dict[str, list[str]]:
    """Each ``fl.*`` field that an entry reads, and the entries that read it (``fl.defence=bucketing``)."""
    owners: dict[str, list[str]] = {}
    for registry, _ in KINDS:
        for name in registry.names():
            for setting in registry.get(name).settings:
                owners.setdefault(setting, []).append(f"{registry.setting}={name}")
    return owners


def check_entry_settings(fl: FLConfig) -> None:
    """Refuse an entry's own setting that the run's strategy, defence and attack do not read."""
    chosen = [(registry.setting, getattr(fl, field)) for registry, field in KINDS]
    used = {setting for (registry, _), (_, name) in zip(KINDS, chosen) for setting in registry.get(name).settings}
    defaults = {f.name: f.default for f in dataclasses.fields(FLConfig)}
    for setting, readers in entry_settings().items():
        value = getattr(fl, setting)
        if setting not in used and value != defaults[setting]:
            run = ", ".join(f"{key}={name}" for key, name in chosen)
            raise ConfigError(f"fl.{setting}={value} is not used by this run ({run}); it is a setting of "
                              f"{', '.join(readers)}")
