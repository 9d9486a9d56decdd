"""Registered experiments. Each module here defines one; ``load_all`` imports them all."""

from __future__ import annotations

import importlib
import pkgutil

from .base import EXPERIMENTS, Experiment, get_experiment, register_experiment

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "register_experiment", "load_all"]


def load_all() -> dict[str, type[Experiment]]:
    """Import every experiment module in this package (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    return EXPERIMENTS
