"""The variant ``deploy.variants`` names, built with the run's ``deploy.*`` settings (imported on demand)."""

from __future__ import annotations

import importlib

from fedq.deploy.settings import VARIANTS, DeployConfig
from fedq.deploy.variant import Variant


def variant_class(name: str) -> type[Variant]:
    module, _, cls = VARIANTS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_variant(name: str, cfg: DeployConfig) -> Variant:
    return variant_class(name).from_settings(cfg)
