from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from hypersparse.config import apply_overrides, config_from_dict, config_to_dict, flat_keys


@dataclass
class Inner:
    lr: float = 0.1
    steps: int | None = None


@dataclass
class Cfg:
    seed: int = 0
    name: str = "a"
    flag: bool = False
    mode: Literal["x", "y"] = "x"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 2.0)
    inner: Inner = field(default_factory=Inner)


def test_parses_each_field_type() -> None:
    c = apply_overrides(
        Cfg(),
        {
            "seed": "3",
            "name": "b",
            "flag": "true",
            "mode": "y",
            "sizes": "4,5,6",
            "pair": "2,0.5",
            "inner.lr": "1e-3",
            "inner.steps": "7",
        },
    )
    assert (c.seed, c.name, c.flag, c.mode) == (3, "b", True, "y")
    assert c.sizes == (4, 5, 6) and c.pair == (2, 0.5)
    assert c.inner == Inner(lr=1e-3, steps=7)
    assert apply_overrides(c, {"inner.steps": "none"}).inner.steps is None


def test_original_is_not_modified() -> None:
    c = Cfg()
    apply_overrides(c, {"inner.lr": "5"})
    assert c.inner.lr == 0.1


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("nope", "1", "unknown config key 'nope'; valid keys: flag, inner.lr"),
        ("inner.nope", "1", "unknown config key"),
        ("inner", "1", "unknown config key"),
        ("seed", "1.5", "seed must be an integer"),
        ("flag", "maybe", "flag must be a boolean"),
        ("mode", "z", r"mode must be one of \['x', 'y'\]"),
        ("pair", "1", "pair needs 2"),
        ("inner.lr", "fast", "inner.lr must be a number"),
    ],
)
def test_bad_overrides_raise_clearly(key: str, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_overrides(Cfg(), {key: value})


def test_round_trip_through_dict() -> None:
    c = apply_overrides(Cfg(), {"sizes": "9", "inner.steps": "3", "flag": "1"})
    assert config_from_dict(Cfg, config_to_dict(c)) == c
    assert flat_keys(c)["inner.steps"] == 3
