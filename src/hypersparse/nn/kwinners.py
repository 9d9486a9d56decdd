"""k-winners layers with duty-cycle boosting (Ahmad & Scheinkman 2019).

All state lives in buffers (``duty_cycles``, ``samples_seen``, ``epoch``), so ``state_dict``
round-trips and a resumed run continues exactly. The boost strength is
``boost_strength * boost_strength_factor ** epoch``; ``epoch`` advances in :meth:`on_epoch_end`,
which :func:`hypersparse.train.fit` calls on every submodule at each epoch end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional.kwinners import k_winners, k_winners2d, update_duty_cycles

__all__ = ["KWinners", "KWinners2d"]


def _check_args(
    percent_on: float, k_inference_factor: float, boost_strength: float,
    boost_strength_factor: float, duty_cycle_period: int,
) -> None:
    if not 0.0 < percent_on <= 1.0:
        raise ValueError(f"percent_on must be in (0, 1], got {percent_on}")
    if not k_inference_factor > 0:
        raise ValueError(f"k_inference_factor must be > 0, got {k_inference_factor}")
    if not boost_strength >= 0:
        raise ValueError(f"boost_strength must be >= 0, got {boost_strength}")
    if not 0.0 < boost_strength_factor <= 1.0:
        raise ValueError(f"boost_strength_factor must be in (0, 1], got {boost_strength_factor}")
    if isinstance(duty_cycle_period, bool) or not isinstance(duty_cycle_period, int) or (
        duty_cycle_period < 1
    ):
        raise ValueError(f"duty_cycle_period must be an int >= 1, got {duty_cycle_period!r}")


class _KWinnersBase(nn.Module):
    k: int
    k_inference: int
    pool: int

    def _setup(
        self, pool: int, n_duty: int, percent_on: float, k_inference_factor: float,
        boost_strength: float, boost_strength_factor: float, duty_cycle_period: int,
        break_ties: bool, relu: bool, device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        _check_args(percent_on, k_inference_factor, boost_strength, boost_strength_factor,
                    duty_cycle_period)
        self.pool = pool
        self.percent_on = float(percent_on)
        self.k = max(1, round(pool * percent_on))
        self.k_inference = min(pool, max(1, round(self.k * k_inference_factor)))
        self.k_inference_factor = float(k_inference_factor)
        self.target_density = self.k / pool
        self.boost_strength = float(boost_strength)
        self.boost_strength_factor = float(boost_strength_factor)
        self.duty_cycle_period = duty_cycle_period
        self.break_ties, self.relu = bool(break_ties), bool(relu)
        self.register_buffer("duty_cycles", torch.zeros(n_duty, device=device, dtype=dtype))
        self.register_buffer("samples_seen", torch.zeros((), device=device, dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), device=device, dtype=torch.long))

    duty_cycles: Tensor
    samples_seen: Tensor
    epoch: Tensor

    def current_boost_strength(self) -> Tensor:
        """``boost_strength * boost_strength_factor ** epoch`` as a 0-d tensor."""
        return self.boost_strength * torch.pow(self.boost_strength_factor, self.epoch)

    def on_epoch_end(self) -> None:
        """Advance the epoch counter (decays the boost strength); called by the training loop."""
        self.epoch.add_(1)

    def reset_state(self) -> None:
        """Zero the duty cycles and both counters."""
        self.duty_cycles.zero_()
        self.samples_seen.zero_()
        self.epoch.zero_()

    def _update(self, y: Tensor) -> Tensor:
        if self.training:
            update_duty_cycles(self.duty_cycles, y, self.samples_seen, self.duty_cycle_period)
        return y

    def extra_repr(self) -> str:
        return (
            f"percent_on={self.percent_on}, k={self.k}, k_inference={self.k_inference}, "
            f"boost_strength={self.boost_strength}, "
            f"boost_strength_factor={self.boost_strength_factor}, "
            f"duty_cycle_period={self.duty_cycle_period}, break_ties={self.break_ties}, "
            f"relu={self.relu}"
        )


class KWinners(_KWinnersBase):
    """k-winners-take-all over ``n`` units with duty-cycle boosting.

    In training ``k = round(n * percent_on)`` units win per sample; in eval
    ``round(k * k_inference_factor)``. Winners are chosen on the boosted values
    ``x * exp(beta * (k / n - duty))`` (also in eval) and pass ``x`` unchanged.

    Args:
        n: number of units.
        percent_on: fraction of winners in training, in (0, 1].
        k_inference_factor: k multiplier in eval.
        boost_strength: initial beta (0 disables boosting).
        boost_strength_factor: beta's decay per epoch.
        duty_cycle_period: the duty-cycle averaging window in samples.
        break_ties: exactly k winners (else all units tied with the k-th win).
        relu: also zero winners with ``x <= 0``.

    Shape:
        input: (B, n); output: (B, n).

    Example:
        >>> kw = KWinners(100, percent_on=0.1)
        >>> int((kw(torch.randn(8, 100)) != 0).sum(1).max())
        10
    """

    def __init__(
        self,
        n: int,
        percent_on: float,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
        break_ties: bool = False,
        relu: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.n = n
        self._setup(n, n, percent_on, k_inference_factor, boost_strength, boost_strength_factor,
                    duty_cycle_period, break_ties, relu, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"KWinners expects input (B, {self.n}), got {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        return self._update(k_winners(
            x, k, duty_cycles=self.duty_cycles, boost_strength=self.current_boost_strength(),
            target_density=self.target_density, break_ties=self.break_ties, relu=self.relu))

    def extra_repr(self) -> str:
        return f"n={self.n}, " + super().extra_repr()


class KWinners2d(_KWinnersBase):
    """k-winners over (C, H, W) feature maps, duty cycles and boosting per channel.

    Global (default): ``k = round(C*H*W * percent_on)`` winners per sample. Local: ``k =
    round(C * percent_on)`` winning channels at every spatial location. A channel's duty cycle
    counts its active units over batch and space, divided by H*W.

    Args:
        channels, height, width: the input's feature-map shape (fixed at construction).
        percent_on, k_inference_factor, boost_strength, boost_strength_factor,
        duty_cycle_period, break_ties, relu: as in :class:`KWinners`.
        local: winners per location instead of per sample.

    Shape:
        input: (B, channels, height, width); output: same.

    Example:
        >>> kw = KWinners2d(8, 4, 4, percent_on=0.25)
        >>> kw(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        percent_on: float = 0.1,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
        break_ties: bool = False,
        relu: bool = False,
        local: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("channels", channels), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.channels, self.height, self.width, self.local = channels, height, width, bool(local)
        pool = channels if local else channels * height * width
        self._setup(pool, channels, percent_on, k_inference_factor, boost_strength,
                    boost_strength_factor, duty_cycle_period, break_ties, relu, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(
                f"KWinners2d expects input (B, {self.channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}"
            )
        k = self.k if self.training else self.k_inference
        return self._update(k_winners2d(
            x, k, duty_cycles=self.duty_cycles, boost_strength=self.current_boost_strength(),
            target_density=self.target_density, local=self.local, break_ties=self.break_ties,
            relu=self.relu))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, height={self.height}, width={self.width}, "
                f"local={self.local}, " + super().extra_repr())
