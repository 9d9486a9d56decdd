"""The one training loop every experiment uses.

:func:`fit` trains a model on a :class:`BatchSource`, validates, keeps the best checkpoint (chosen
on validation, never on test), logs per-step metrics and resumes bit-exactly. Reproducibility
comes from one rule: before each step the global torch RNG is seeded from ``(seed, rank, step)``
and each batch is a pure function of ``(seed, epoch, index)``, so a resumed run draws exactly the
random numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor, nn

from .io import load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .run import RunContext

__all__ = [
    "TrainConfig",
    "BatchSource",
    "TensorBatches",
    "SyntheticBatches",
    "FitResult",
    "fit",
    "derive_seed",
    "lr_factor",
    "make_optimizer",
    "ema_average",
]

Batch = tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], "Tensor | tuple[Tensor, dict[str, Tensor | float]]"]
Validate = Callable[[nn.Module], dict[str, float]]
Callback = Callable[[int, nn.Module, dict[str, float]], "bool | None"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. ``(seed, "data", epoch)``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every experiment.

    ``max_steps`` (when set) overrides ``epochs``. ``schedule`` is one of ``constant``,
    ``cosine`` (to zero over the run), ``step`` (times ``lr_decay`` every ``decay_every``
    epochs) or ``exponential`` (times ``lr_decay`` per epoch, smoothly). ``warmup_steps`` ramps
    linearly from zero. ``checkpoint_every``/``val_every`` are in steps; 0 means at each epoch end.
    ``ema_decay`` (when set, in (0, 1)) keeps an exponential moving average of the weights
    (:func:`ema_average`); validation, the best checkpoint and the returned model then use the
    average, and the live model's validation metrics are logged with the prefix ``live_``.
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step", "exponential"] = "constant"
    lr_decay: float = 0.1
    decay_every: int = 1
    warmup_steps: int = 0
    grad_clip: float | None = None
    log_every: int = 10
    val_every: int = 0
    checkpoint_every: int = 0
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in ("log_every", "decay_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1) or None, got {self.ema_decay}")


class BatchSource(Protocol):
    """Random-access batches: ``batch(epoch, index)`` is a pure function of its arguments."""

    def __len__(self) -> int: ...

    def batch(self, epoch: int, index: int) -> Batch: ...


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors, one permutation per ``(seed, epoch)``.

    Args:
        tensors: tensors sharing their first dimension (e.g. images and labels).
        batch_size: samples per batch (per process under DDP).
        seed: base seed; the permutation of epoch ``e`` is drawn from ``derive_seed(seed, e)``.
        shuffle: shuffle each epoch (else take samples in order).
        drop_last: drop the last incomplete batch.
        rank, world_size: this process's shard of every global batch.

    Example:
        >>> src = TensorBatches((torch.arange(10.0),), batch_size=4, seed=0)
        >>> len(src), src.batch(0, 0)[0].shape
        (2, torch.Size([4]))
    """

    def __init__(
        self,
        tensors: Sequence[Tensor],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not tensors:
            raise ValueError("TensorBatches needs at least one tensor")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"tensors differ in length: {[t.shape[0] for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        global_batch = batch_size * world_size
        if n < global_batch and drop_last:
            raise ValueError(f"{n} samples cannot fill one batch of {global_batch}")
        self.tensors = tuple(tensors)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size, self.n = rank, world_size, n
        self._len = n // global_batch if drop_last else math.ceil(n / global_batch)
        self._perm_epoch: int | None = None
        self._perm = torch.arange(n)

    def __len__(self) -> int:
        return self._len

    def _permutation(self, epoch: int) -> Tensor:
        if self.shuffle and self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, epoch: int, index: int) -> Batch:
        if not 0 <= index < self._len:
            raise IndexError(f"batch index {index} out of range [0, {self._len})")
        gb = self.batch_size * self.world_size
        idx = self._permutation(epoch)[index * gb : (index + 1) * gb]
        idx = idx[self.rank :: self.world_size]
        return tuple(t[idx] for t in self.tensors)


class SyntheticBatches:
    """Batches drawn by ``make(batch_size, generator)`` from a generator seeded by
    ``(seed, rank, epoch, index)``: for tasks whose data is sampled (identity, sorting).
    """

    def __init__(
        self,
        make: Callable[[int, torch.Generator], Batch],
        batch_size: int,
        batches_per_epoch: int,
        *,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.make, self.batch_size, self.seed, self.rank = make, batch_size, seed, rank
        self._len = batches_per_epoch

    def __len__(self) -> int:
        return self._len

    def batch(self, epoch: int, index: int) -> Batch:
        g = torch.Generator().manual_seed(
            derive_seed(self.seed, "synthetic", self.rank, epoch, index)
        )
        return self.make(self.batch_size, g)


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at ``step`` (a pure function, so nothing to checkpoint)."""
    f = 1.0
    if config.warmup_steps and step < config.warmup_steps:
        f *= (step + 1) / config.warmup_steps
    epoch_pos = step / steps_per_epoch
    if config.schedule == "cosine":
        f *= 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    elif config.schedule == "step":
        f *= config.lr_decay ** (int(epoch_pos) // config.decay_every)
    elif config.schedule == "exponential":
        f *= config.lr_decay ** (epoch_pos / config.decay_every)
    return f


def make_optimizer(params: Iterable[Any], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: adam, adamw, sgd")


def ema_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights, updated by ``update_parameters``.

    A :class:`torch.optim.swa_utils.AveragedModel` that averages every parameter and floating
    buffer (batch-norm statistics, annealed gains) with the warmed-up decay
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated
    by the initial weights; integer buffers follow the live model's. The copy is in eval mode
    and needs no gradients; ``ema.module`` loads into (and from) the model's own state dict.
    Plain attributes (not parameters or buffers) are copied once, at construction: the average
    is for evaluation, so training-only switches set later on the live model do not reach it.

    Args:
        model: the live model; deep-copied once.
        decay: the long-run decay in (0, 1), e.g. 0.999 (a horizon of about 1,000 steps).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> ema = ema_average(net, 0.99)
        >>> ema.update_parameters(net)
        >>> torch.equal(ema.module.weight, net.weight)
        True
    """
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[Tensor] | tuple[Tensor, ...],
               current: list[Tensor] | tuple[Tensor, ...], n: Tensor | int) -> None:
        # n counts the updates before this one (>= 1 here; the first update copies)
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.eval().requires_grad_(False)
    return ema


@dataclass
class FitResult:
    """What :func:`fit` returns. ``best`` is the selection metric's best value (or None)."""

    steps: int
    epochs_done: float
    best: float | None
    best_step: int | None
    train_seconds: float
    stopped_early: bool
    last_metrics: dict[str, float]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _shard(batch: Batch, rank: int, world_size: int) -> Batch:
    """This process's rows of a global batch (rows rank, rank + W, ...)."""
    if world_size == 1:
        return batch
    n = batch[0].shape[0]
    if n % world_size:
        raise ValueError(f"global batch of {n} does not split evenly over {world_size} processes")
    return tuple(t[rank::world_size] for t in batch)


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _epoch_hooks(model: nn.Module) -> None:
    # Modules with per-epoch state (e.g. k-winners boost decay) advance it in a buffer.
    for m in model.modules():
        hook = getattr(m, "on_epoch_end", None)
        if callable(hook):
            hook()


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: BatchSource,
    *,
    config: TrainConfig,
    ctx: RunContext,
    stage: str = "model",
    validate: Validate | None = None,
    select: str = "val_loss",
    mode: Literal["min", "max"] = "min",
    optimizer: torch.optim.Optimizer | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` and leave it holding its best-on-validation weights.

    Args:
        model: the module to train (already on ``ctx.device``).
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, {name: value})``.
        train: the training batches.
        config: optimisation settings.
        ctx: the run (directory, seed, device, resume flag).
        stage: name of this training stage; checkpoints live in ``checkpoints/<stage>/``.
        validate: ``validate(model) -> {name: value}``, called in eval mode under no_grad at
            each epoch end (or every ``val_every`` steps); must contain ``select``.
        select, mode: the validation key that picks the best checkpoint, and its direction.
        optimizer: defaults to :func:`make_optimizer` over ``model.parameters()``.
        callbacks: ``cb(step, model, metrics) -> stop?`` after every step.

    Returns:
        A :class:`FitResult`. A finished stage found on ``--resume`` is not retrained: its best
        weights are loaded and its result returned.

    Under ``torchrun`` (``ctx.world_size > 1``) the model is wrapped in
    ``DistributedDataParallel`` and ``loss_fn`` receives the wrapper (call it, don't reach into
    its attributes); each global batch from ``train`` is split row-wise over the processes, so
    N processes see the same data per step as one and gradients are averaged exactly. Only rank
    0 writes files.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    steps_per_epoch = len(train)
    total = config.max_steps or config.epochs * steps_per_epoch
    opt = optimizer or make_optimizer(model.parameters(), config)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckpt_dir = ctx.run_dir / "checkpoints" / stage
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    ema = None if config.ema_decay is None else ema_average(model, config.ema_decay)
    # what validation sees, the best checkpoint holds and fit returns: the average when kept
    kept: nn.Module = model if ema is None else ema.module

    state: dict[str, Any] = {
        "step": 0,
        "best": None,
        "best_step": None,
        "last_val_step": None,
        "train_seconds": 0.0,
        "done": False,
        "stopped_early": False,
        "last_metrics": {},
    }
    if ctx.resume and last_path.exists():
        ckpt = load_checkpoint(last_path, map_location=ctx.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            if "ema" not in ckpt:
                raise ValueError(f"{last_path} holds no weight average; resume with the "
                                 "train.ema_decay it was written with")
            ema.load_state_dict(ckpt["ema"])
        state.update(ckpt["state"])
        if state["done"]:
            if best_path.exists():
                model.load_state_dict(load_checkpoint(best_path)["model"])
            return _result(state, steps_per_epoch)
        ctx.truncate_metrics(int(ckpt["metrics_lines"]))

    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)

    def checkpoint() -> None:
        if ctx.is_main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "state": state,
                    "metrics_lines": ctx.metrics_lines(),
                    **({} if ema is None else {"ema": ema.state_dict()}),
                },
                last_path,
            )

    def run_validation(step: int) -> dict[str, float]:
        if validate is None:
            return {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in validate(kept).items()}
            if ema is not None:
                metrics.update({f"live_{k}": float(v) for k, v in validate(model).items()})
        model.train(was_training)
        if select not in metrics:
            raise KeyError(f"validate() returned {sorted(metrics)}, missing select key {select!r}")
        ctx.log({"stage": stage, "split": "val", "step": step, **metrics})
        state["last_val_step"] = step
        value = metrics[select]
        if state["best"] is None or better(value, state["best"]):
            state["best"], state["best_step"] = value, step
            if ctx.is_main:
                save_checkpoint(
                    {"model": kept.state_dict(), "step": step, select: value}, best_path
                )
        return metrics

    from tqdm.auto import tqdm

    world = ctx.world_size
    trained: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=ids)

    model.train()
    pbar = tqdm(
        total=total,
        initial=state["step"],
        desc=stage,
        disable=not (ctx.progress and ctx.is_main),
        leave=False,
    )
    window: dict[str, float] = {}
    window_n = 0
    consistent = True
    try:
        while state["step"] < total:
            step = state["step"]
            epoch, index = divmod(step, steps_per_epoch)
            t0 = time.perf_counter()
            torch.manual_seed(derive_seed(ctx.seed, "step", ctx.rank, step))
            batch = _to_device(_shard(train.batch(epoch, index), ctx.rank, world), ctx.device)
            factor = lr_factor(config, step, total, steps_per_epoch)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            out = loss_fn(trained, batch)
            loss, extra = out if isinstance(out, tuple) else (out, {})
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage!r}: loss is {loss.item()} at step {step}")
            consistent = False
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            state["step"] = step = step + 1
            state["train_seconds"] += time.perf_counter() - t0
            consistent = True

            window["loss"] = window.get("loss", 0.0) + float(loss.detach())
            for k, v in extra.items():
                window[k] = window.get(k, 0.0) + float(v)
            window_n += 1
            metrics: dict[str, float] = {}
            if step % config.log_every == 0 or step == total:
                metrics = {k: v / window_n for k, v in window.items()}
                ctx.log(
                    {
                        "stage": stage,
                        "split": "train",
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "lr": base_lrs[0] * factor,
                        **metrics,
                    }
                )
                pbar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                state["last_metrics"] = metrics
                window, window_n = {}, 0
            epoch_end = step % steps_per_epoch == 0
            if epoch_end:
                _epoch_hooks(model)
            if (config.val_every and step % config.val_every == 0) or (
                not config.val_every and epoch_end
            ):
                metrics = {**metrics, **run_validation(step)}
            pbar.update(1)
            stop = any(bool(cb(step, model, metrics)) for cb in callbacks)
            if _any_rank(stop, world, ctx.device):
                state["stopped_early"] = True
                break
            if epoch_end or (config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint()
    except KeyboardInterrupt:
        if consistent:
            checkpoint()
        raise
    finally:
        pbar.close()

    if validate is not None and state["last_val_step"] != state["step"]:
        run_validation(state["step"])
    state["done"] = True
    checkpoint()
    _barrier(world)
    if validate is not None and best_path.exists():
        model.load_state_dict(load_checkpoint(best_path, map_location=ctx.device)["model"])
    else:
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())
        if validate is None and ctx.is_main:
            save_checkpoint({"model": model.state_dict(), "step": state["step"]}, best_path)
    return _result(state, steps_per_epoch)


def _result(state: dict[str, Any], steps_per_epoch: int) -> FitResult:
    return FitResult(
        steps=state["step"],
        epochs_done=state["step"] / steps_per_epoch,
        best=state["best"],
        best_step=state["best_step"],
        train_seconds=state["train_seconds"],
        stopped_early=state["stopped_early"],
        last_metrics=dict(state["last_metrics"]),
    )
