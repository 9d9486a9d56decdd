"""``learn-dilation``: learn the dilation of a convolution through its index tuples (seed 000,
"compression/prior"; issue 7).

Synthetic task: inputs are smooth random images (white noise blurred by a Gaussian of
``smooth`` pixels and standardised, so that neighbouring pixels correlate as in natural images);
the target is a fixed random ``k x k`` convolution at dilation ``target_dilation``. The model is
one :class:`~hypersparse.nn.DilatedConv2d` whose dilation starts at ``init_dilation`` and whose
kernel is learned with it. The summary reports the learned dilation of the best-on-validation
model, the target and the test MSE (fresh images, never seen in training or selection).

MNIST task (``task=mnist``): a small classifier (``conv_channels`` conv layers, each
conv -> ReLU -> 2x2 max-pool, then one linear layer) whose convolutions are
:class:`~hypersparse.nn.DilatedConv2d` with one learned dilation per layer (starting at
``init_dilation``), against the *same* network with dilation fixed at 1 (``baseline=conv2d``:
``nn.Conv2d(padding=(k-1)//2)``, which equals a ``DilatedConv2d`` at dilation 1 in eval;
``baseline=frozen``: the ``DilatedConv2d`` network with its dilations frozen, which also keeps
the sampled training). Both start from the same weights and train on the same batches with the
same optimiser (``train``); each is selected on the validation split and reported on the test
split of ``hypersparse.data.digits(dataset, split)``, images resized to ``size x size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import digits
from ..nn.dilation import DilatedConv2d
from ..run import RunContext
from ..train import SyntheticBatches, TensorBatches, TrainConfig
from .base import Experiment, register_experiment
from .common import accuracy, batched, count_parameters

__all__ = ["LearnDilationConfig", "dilation_cnn", "smooth_images"]


@dataclass
class LearnDilationConfig:
    """Both tasks share ``size``, ``kernel_size``, ``init_dilation``, ``max_dilation``,
    ``sigma``, ``local_samples`` and ``train``; ``channels``, ``target_dilation``, ``smooth``,
    ``n_val``, ``n_test`` and ``batches_per_epoch`` are the synthetic task's, ``dataset``,
    ``conv_channels``, ``baseline`` and ``eval_batch`` the MNIST task's."""

    seed: int = 0
    task: Literal["synthetic", "mnist"] = "synthetic"
    channels: int = 1
    size: int = 16
    kernel_size: int = 3
    target_dilation: int = 3
    init_dilation: float = 1.0
    max_dilation: float = 5.0
    sigma: float = 0.5
    local_samples: int = 4
    smooth: float = 1.5
    n_val: int = 256
    n_test: int = 512
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=32, lr=0.02, log_every=10, val_every=50))
    batches_per_epoch: int = 400
    dataset: Literal["mnist", "fashion"] = "mnist"
    conv_channels: tuple[int, ...] = (8, 16)
    baseline: Literal["conv2d", "frozen"] = "conv2d"
    eval_batch: int = 250


def smooth_images(n: int, channels: int, size: int, width: float,
                  generator: torch.Generator) -> Tensor:
    """(n, channels, size, size) Gaussian-blurred white noise, standardised per image.

    ``width`` is the blur's standard deviation in pixels (0: white noise).
    """
    x = torch.randn(n, channels, size, size, generator=generator)
    if width > 0:
        r = int(3 * width + 0.5)
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / width) ** 2)
        k = (k / k.sum()).view(1, 1, -1)  # (1, 1, 2r+1)
        c = channels
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"),
                     k.view(1, 1, 1, -1).expand(c, 1, 1, 2 * r + 1), groups=c)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"),
                     k.view(1, 1, -1, 1).expand(c, 1, 2 * r + 1, 1), groups=c)
    std = x.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return x / std


def dilation_cnn(channels: tuple[int, ...], size: int, kernel_size: int = 3, *,
                 learned: bool = True, dilation: float = 1.0, max_dilation: float = 5.0,
                 sigma: float = 0.5, local_samples: int = 4, n_classes: int = 10,
                 in_channels: int = 1) -> nn.Sequential:
    """``(conv -> ReLU -> MaxPool2d(2))* -> Flatten -> Linear``, the MNIST task's classifier.

    With ``learned=True`` every conv is a :class:`DilatedConv2d` (one learned dilation each,
    starting at ``dilation``); else an ``nn.Conv2d`` with dilation 1 and "same" padding, the
    function a ``DilatedConv2d`` computes in eval at dilation 1.

    Shape:
        input: (B, in_channels, size, size); output: (B, n_classes).
    """
    layers: list[nn.Module] = []
    cin, s = in_channels, size
    for cout in channels:
        if learned:
            conv: nn.Module = DilatedConv2d(cin, cout, s, s, kernel_size, dilation=dilation,
                                            max_dilation=max_dilation, sigma=sigma,
                                            local_samples=local_samples)
        else:
            conv = nn.Conv2d(cin, cout, kernel_size, padding=(kernel_size - 1) // 2)
        layers += [conv, nn.ReLU(), nn.MaxPool2d(2)]
        cin, s = cout, s // 2
    layers += [nn.Flatten(), nn.Linear(cin * s * s, n_classes)]
    return nn.Sequential(*layers)


@torch.no_grad()
def _copy_weights(src: nn.Sequential, dst: nn.Sequential) -> None:
    """Give ``dst`` the weights of ``src`` (same layout; dilations are not copied to Conv2d)."""
    for a, b in zip(src, dst, strict=True):
        if isinstance(a, DilatedConv2d) and isinstance(b, nn.Conv2d):
            b.weight.copy_(a.weight)
            if b.bias is not None and a.conv_bias is not None:
                b.bias.copy_(a.conv_bias)
        elif isinstance(a, nn.Conv2d | nn.Linear | DilatedConv2d):
            b.load_state_dict(a.state_dict())


def _dilations(model: nn.Module) -> list[float]:
    return [float(m.effective_dilation().detach()) for m in model.modules()
            if isinstance(m, DilatedConv2d)]


@register_experiment("learn-dilation",
                     help="learn a convolution's dilation through its sparse index tuples")
class LearnDilation(Experiment):
    Config = LearnDilationConfig
    presets = {"full": {"train.epochs": 3, "size": 28}}

    def _check(self, config: LearnDilationConfig) -> None:
        if config.task not in ("synthetic", "mnist"):
            raise ValueError(f"task must be 'synthetic' or 'mnist', got {config.task!r}")
        if config.task == "mnist":
            self._check_mnist(config)
            return
        if not 0 <= config.target_dilation <= config.max_dilation:
            raise ValueError(f"target_dilation must be in [0, max_dilation="
                             f"{config.max_dilation}], got {config.target_dilation}")

    def _target(self, config: LearnDilationConfig, ctx: RunContext) -> Tensor:
        c, k = config.channels, config.kernel_size
        return torch.randn(c, c, k, k, generator=ctx.generator("target"))

    def _model(self, config: LearnDilationConfig, ctx: RunContext) -> DilatedConv2d:
        c, s = config.channels, config.size
        return DilatedConv2d(c, c, s, s, config.kernel_size, dilation=config.init_dilation,
                             max_dilation=config.max_dilation, sigma=config.sigma,
                             local_samples=config.local_samples, bias=False).to(ctx.device)

    def _data(self, config: LearnDilationConfig, kernel: Tensor, n: int,
              g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = smooth_images(n, config.channels, config.size, config.smooth, g)
        d = config.target_dilation
        if d == 0:
            return x, F.conv2d(x, kernel.sum((2, 3), keepdim=True))
        return x, F.conv2d(x, kernel, padding=(config.kernel_size - 1) // 2 * d, dilation=d)

    def run(self, config: LearnDilationConfig, ctx: RunContext) -> dict[str, Any]:
        self._check(config)
        if config.task == "mnist":
            return self._run_mnist(config, ctx)
        kernel = self._target(config, ctx)
        model = self._model(config, ctx)
        with torch.no_grad():
            model.weight.copy_(torch.randn(model.weight.shape, generator=ctx.generator("init"))
                               * 0.1)
        source = SyntheticBatches(lambda b, g: self._data(config, kernel, b, g),
                                  config.train.batch_size, config.batches_per_epoch,
                                  seed=config.seed)
        vx, vy = (t.to(ctx.device) for t in self._data(config, kernel, config.n_val,
                                                        ctx.generator("val")))

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
            assert isinstance(m, DilatedConv2d)
            x, y = batch
            return F.mse_loss(m(x), y), {"dilation": float(m.effective_dilation().detach())}

        def validate(m: nn.Module) -> dict[str, float]:
            assert isinstance(m, DilatedConv2d)
            return {"val_mse": float(F.mse_loss(m(vx), vy)),
                    "dilation": float(m.effective_dilation())}

        result = ctx.fit(model, loss_fn, source, config=config.train, stage="synthetic",
                         validate=validate, select="val_mse", mode="min")
        if ctx.is_main:
            self._plot(config, ctx)
        summary = self.evaluate(config, ctx, model)
        summary.update(train_seconds=result.train_seconds, best_step=result.best_step)
        return summary

    def evaluate(self, config: LearnDilationConfig, ctx: RunContext,
                 model: DilatedConv2d | None = None) -> dict[str, Any]:
        self._check(config)
        if config.task == "mnist":
            return self._evaluate_mnist(config, ctx)
        kernel = self._target(config, ctx)
        if model is None:
            model = self._model(config, ctx)
            ctx.load_best(model, "synthetic")
        model.eval()
        tx, ty = self._data(config, kernel, config.n_test, ctx.generator("test"))
        with torch.no_grad():
            mse = float(F.mse_loss(model(tx.to(ctx.device)), ty.to(ctx.device)))
            zero = float(ty.pow(2).mean())
        return {"final_dilation": float(model.effective_dilation().detach()),
                "target_dilation": config.target_dilation,
                "mse": mse,
                "mse_of_zero_prediction": zero,
                "init_dilation": config.init_dilation}

    def _plot(self, config: LearnDilationConfig, ctx: RunContext) -> None:
        from ..plotting import figure

        rows = [r for r in ctx.metrics() if r.get("stage") == "synthetic"
                and r.get("split") == "train" and "dilation" in r]
        fig, (ax, bx) = figure(1, 2, figsize=(9, 3.2))
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["dilation"] for r in rows], label="learned")
        ax.axhline(config.target_dilation, color="k", ls="--", lw=1, label="target")
        ax.set_xlabel("step")
        ax.set_ylabel("dilation")
        ax.legend()
        bx.semilogy(steps, [r["loss"] for r in rows])
        bx.set_xlabel("step")
        bx.set_ylabel("train MSE")
        fig.suptitle(f"learned dilation (seed {config.seed}, sigma {config.sigma})", fontsize=9)
        ctx.save_figure(fig, "dilation")

    # ---- task=mnist ---------------------------------------------------------------------

    def _check_mnist(self, config: LearnDilationConfig) -> None:
        ch = config.conv_channels
        if not ch or any(not isinstance(c, int) or c < 1 for c in ch):
            raise ValueError(f"conv_channels must be a non-empty tuple of ints >= 1, got {ch!r}")
        if config.size < 2 ** len(ch):
            raise ValueError(f"size must be >= 2**len(conv_channels) = {2 ** len(ch)} (one 2x2 "
                             f"pool per conv layer), got {config.size}")
        if not 0 <= config.init_dilation <= config.max_dilation:
            raise ValueError(f"init_dilation must be in [0, max_dilation={config.max_dilation}]"
                             f", got {config.init_dilation}")
        if config.baseline not in ("conv2d", "frozen"):
            raise ValueError(f"baseline must be 'conv2d' or 'frozen', got {config.baseline!r}")
        if config.eval_batch < 1:
            raise ValueError(f"eval_batch must be >= 1, got {config.eval_batch}")

    def _images(self, config: LearnDilationConfig, split: str) -> tuple[Tensor, Tensor]:
        data = digits(config.dataset, split)
        x = data.float()  # (N, 1, 28, 28)
        if x.shape[-1] != config.size:
            x = F.interpolate(x, size=(config.size, config.size), mode="area")  # (N, 1, s, s)
        return x, data.labels

    def _networks(self, config: LearnDilationConfig,
                  ctx: RunContext) -> tuple[nn.Sequential, nn.Sequential]:
        """The learned-dilation classifier and its fixed-dilation twin, with equal weights."""
        kw: dict[str, Any] = {"dilation": config.init_dilation,
                              "max_dilation": config.max_dilation, "sigma": config.sigma,
                              "local_samples": config.local_samples}
        learned = dilation_cnn(config.conv_channels, config.size, config.kernel_size, **kw)
        frozen = config.baseline == "frozen"
        fixed = dilation_cnn(config.conv_channels, config.size, config.kernel_size,
                             learned=frozen, **{**kw, "dilation": 1.0})
        _copy_weights(learned, fixed)
        if frozen:
            for m in fixed.modules():
                if isinstance(m, DilatedConv2d):
                    with torch.no_grad():
                        m.dilation.fill_(1.0)
                    m.dilation.requires_grad_(False)
        return learned.to(ctx.device), fixed.to(ctx.device)

    def _run_mnist(self, config: LearnDilationConfig, ctx: RunContext) -> dict[str, Any]:
        x, y = self._images(config, "train")
        vx, vy = (t.to(ctx.device) for t in self._images(config, "val"))
        learned, fixed = self._networks(config, ctx)

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
            xb, yb = batch
            logits = m(xb)
            metrics = {"accuracy": accuracy(logits.detach(), yb)}
            metrics.update({f"dilation_{i + 1}": d for i, d in enumerate(_dilations(m))})
            return F.cross_entropy(logits, yb), metrics

        def validate(m: nn.Module) -> dict[str, float]:
            logits = batched(m, vx, config.eval_batch)
            out = {"val_loss": float(F.cross_entropy(logits, vy)),
                   "val_accuracy": accuracy(logits, vy)}
            out.update({f"dilation_{i + 1}": d for i, d in enumerate(_dilations(m))})
            return out

        results = {}
        for stage, model in (("learned", learned), ("fixed", fixed)):
            # identical batches for both networks: the same seed gives the same permutations
            source = TensorBatches((x, y), config.train.batch_size, seed=config.seed)
            results[stage] = ctx.fit(model, loss_fn, source, config=config.train, stage=stage,
                                     validate=validate, select="val_accuracy", mode="max")
        if ctx.is_main:
            self._plot_mnist(config, ctx)
        summary = self._evaluate_mnist(config, ctx, learned, fixed)
        summary.update(train_seconds=results["learned"].train_seconds,
                       fixed_train_seconds=results["fixed"].train_seconds,
                       best_step=results["learned"].best_step,
                       fixed_best_step=results["fixed"].best_step)
        return summary

    def _evaluate_mnist(self, config: LearnDilationConfig, ctx: RunContext,
                        learned: nn.Module | None = None,
                        fixed: nn.Module | None = None) -> dict[str, Any]:
        if learned is None or fixed is None:
            learned, fixed = self._networks(config, ctx)
            ctx.load_best(learned, "learned")
            ctx.load_best(fixed, "fixed")
        out: dict[str, Any] = {"task": "mnist", "dataset": config.dataset,
                               "baseline": config.baseline, "size": config.size}
        for prefix, model in (("", learned), ("fixed_", fixed)):
            model.eval()
            for split in ("val", "test"):
                sx, sy = self._images(config, split)
                logits = batched(model, sx.to(ctx.device), config.eval_batch)
                out[f"{prefix}{split}_accuracy"] = accuracy(logits, sy.to(ctx.device))
            out[f"{prefix}params"] = count_parameters(model)
        dil = _dilations(learned)
        out["learned_dilations"] = dil
        out.update({f"learned_dilation_{i + 1}": d for i, d in enumerate(dil)})
        out["init_dilation"] = config.init_dilation
        out["data_source"] = digits(config.dataset, "test").source
        return out

    def _plot_mnist(self, config: LearnDilationConfig, ctx: RunContext) -> None:
        from ..plotting import figure

        rows = ctx.metrics()
        train = [r for r in rows if r.get("stage") == "learned" and r.get("split") == "train"]
        n = len(config.conv_channels)
        fig, (ax, bx) = figure(1, 2, figsize=(9, 3.2))
        for i in range(n):
            key = f"dilation_{i + 1}"
            pts = [(r["step"], r[key]) for r in train if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"conv {i + 1}")
        ax.axhline(1.0, color="k", ls="--", lw=1, label="fixed")
        ax.set_xlabel("step")
        ax.set_ylabel("dilation")
        ax.legend()
        for stage, label in (("learned", "learned dilation"), ("fixed", f"dilation 1 "
                                                                        f"({config.baseline})")):
            val = [r for r in rows if r.get("stage") == stage and r.get("split") == "val"]
            bx.plot([r["step"] for r in val], [r["val_accuracy"] for r in val], marker=".",
                    label=label)
        bx.set_xlabel("step")
        bx.set_ylabel("val accuracy")
        bx.legend()
        fig.suptitle(f"learned dilations on {config.dataset} {config.size}x{config.size} "
                     f"(seed {config.seed}, sigma {config.sigma})", fontsize=9)
        ctx.save_figure(fig, "dilation")
