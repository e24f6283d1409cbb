"""One registry per kind of extension: built-in entries by name, a researcher's own by ``module:Class``.

Most entries are classes that a run builds (``ClassRegistry``: codecs,
strategies, defences, attacks, report sinks); device profiles are values
(``Registry``: a ``DeviceProfile`` each, ``module:NAME``).

A setting that names an extension (``fl.defence``, ``fl.attack``) takes

- the name of a built-in entry (``fl.defence=nnm``), or of an entry registered
  by a module that was imported first;
- ``module:Class``, a class of the right kind in any importable module
  (``fl.defence=my_defences:DropFarthest``): fedq imports it in every process
  that needs it (the server for a defence; each client too for an attack of one
  client alone), so the module must be on their path (``PYTHONPATH``);
- the name of a Python entry point in the group ``fedq.<kind>`` that an
  installed package declares (``[project.entry-points."fedq.defences"]``).

Why plain strings and not Hydra's ``_target_``: a run's whole config travels as
one YAML text to the ServerApp, the SuperNodes and every Ray worker, is checked
before any work, and names its rows in ``fedq.report``; a string setting stays
a value on the command line (``fl.defence=x``) and in those three places, where
a ``_target_`` node would need ``instantiate`` in every process and could not
be validated without importing it first.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar, cast

from fedq.errors import ConfigError

E = TypeVar("E")
T = TypeVar("T")


class Registry(Generic[E]):
    """The entries of one kind (``kind``: ``devices``), which ``setting`` (``fl.devices``) names: instances of
    ``base``, each registered under its ``name``."""

    def __init__(self, kind: str, setting: str, base: type) -> None:
        self.kind, self.setting, self.base = kind, setting, base
        self.entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        """Register ``entry`` under its ``name`` (for classes, a class decorator)."""
        name = entry.name  # type: ignore[attr-defined]
        if name in self.entries and self.entries[name] is not entry:
            raise ValueError(f"{self.kind}: {name!r} is registered twice")
        self.entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def get(self, name: str) -> E:
        """The entry ``name`` means; an unknown or broken one is one ConfigError line."""
        if name in self.entries:
            return self.entries[name]
        if ":" in name:
            return self._checked(name, self._import(name))
        found = [point for point in entry_points(group=f"fedq.{self.kind}") if point.name == name]
        if found:
            return self._checked(name, found[0].load())
        raise ConfigError(f"{self.setting}={name!r} is unknown; choose one of {', '.join(self.entries)}, "
                          f"or give module:{self._what} of your own")

    _what = "NAME"

    def _import(self, name: str) -> object:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"{self.setting}={name}: cannot import {module_name} ({err}); is it on PYTHONPATH?") from None
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise ConfigError(f"{self.setting}={name}: {module_name} has no {attribute}") from None

    def _is_entry(self, entry: object) -> bool:
        return isinstance(entry, self.base)

    def _checked(self, name: str, entry: object) -> E:
        if not self._is_entry(entry):
            raise ConfigError(f"{self.setting}={name} is not a {self.base.__module__}.{self.base.__name__}")
        return cast("E", entry)  # checked by _is_entry


class ClassRegistry(Registry[type[T]]):
    """A registry of classes, subclasses of ``base`` (``T``, the instances they build)."""

    _what = "Class"

    def make(self, name: str, *args: object, **kwargs: object) -> T:
        """The entry ``name`` means, built with ``args`` and ``kwargs``."""
        return self.get(name)(*args, **kwargs)

    def _is_entry(self, entry: object) -> bool:
        return isinstance(entry, type) and issubclass(entry, self.base)
