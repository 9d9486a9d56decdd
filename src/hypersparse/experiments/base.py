"""The experiment registry and base class.

An experiment is a config dataclass plus ``run(config, ctx) -> summary``; registering it makes
it available to ``hypersparse run NAME``. Modules in this package register on import, and the
package imports all of them, so adding an experiment is adding one file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..run import RunContext

__all__ = ["Experiment", "register_experiment", "get_experiment", "EXPERIMENTS"]

EXPERIMENTS: dict[str, type[Experiment]] = {}


class Experiment:
    """Base class: set ``Config`` (a dataclass with a ``seed`` field) and implement ``run``.

    ``presets`` maps a preset name (``--set preset=full``) to overrides applied before the
    user's. ``evaluate`` re-computes the headline metrics from the best checkpoints
    (``hypersparse eval RUN_DIR``).
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    Config: ClassVar[type[Any]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def run(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError(f"experiment {self.name!r} does not support eval")


def register_experiment(
    name: str, help: str = ""
) -> Callable[[type[Experiment]], type[Experiment]]:
    """Class decorator adding an :class:`Experiment` subclass to the registry under ``name``."""

    def wrap(cls: type[Experiment]) -> type[Experiment]:
        if name in EXPERIMENTS and EXPERIMENTS[name] is not cls:
            raise ValueError(f"experiment {name!r} is already registered")
        if not hasattr(cls, "Config"):
            raise TypeError(f"experiment {name!r} must define a Config dataclass")
        if "seed" not in getattr(cls.Config, "__dataclass_fields__", {}):
            raise TypeError(f"experiment {name!r}: Config needs a `seed: int` field")
        cls.name = name
        cls.help = help or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        EXPERIMENTS[name] = cls
        return cls

    return wrap


def get_experiment(name: str) -> type[Experiment]:
    """The registered experiment class; unknown names list the valid ones."""
    from . import load_all

    load_all()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]
