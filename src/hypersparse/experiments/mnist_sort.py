"""``mnist-sort``: sort sequences of 4-digit MNIST numbers by a learned key (NeuralSort's
large-MNIST protocol), with the differentiable quicksort, NeuralSort or diffsort.

A CNN (conv5x5-32, pool, conv5x5-64, pool, fc64, fc1) maps each 112x28 number image to a scalar
key; the differentiable sort orders the sequence; the loss compares with the true order. All
three methods share the network, the data and the budget; only the sort and its loss differ:

* ``quicksort``: :class:`hypersparse.nn.SortLayer`. ``quicksort_loss="ce"`` sorts the one-hot
  true ranks and takes the cross-entropy of each output position with its rank (the form of the
  other two losses; the targets are n x n, the sort itself is not); ``"mse"`` sorts the scalar
  true ranks (O(n) in total) and takes the squared error with ``0..n-1`` (scaled to [0, 1]).
  ``level_loss`` adds the same loss after every split level, against the level outputs of the
  hard sort of the true ranks (the per-level targets).
* ``neuralsort``: the cross-entropy of each row of the relaxed permutation matrix with the true
  one (Grover et al., 2019).
* ``diffsort``: the odd-even differentiable sorting network of the ``diffsort`` package
  (Petersen et al.), binary cross-entropy of its permutation matrix with the true one.

Evaluation sorts hard (the keys' stable arg-sort; for quicksort, the SortLayer in eval mode,
which is exactly that) on held-out sequences of *test* digits, from the best-on-validation
checkpoint. ``exact_match``: the whole sequence comes out in order; ``element_accuracy``: the
fraction of positions holding the right number (ties in the numbers count either way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import digits
from ..data.sequences import DigitSequences, digit_sequences, sequence_images
from ..functional.sort import neuralsort, quicksort
from ..nn.sort import SortLayer
from ..run import RunContext
from ..train import SyntheticBatches, TrainConfig
from .base import Experiment, register_experiment
from .common import count_parameters

Method = Literal["quicksort", "neuralsort", "diffsort"]
METHODS = ("quicksort", "neuralsort", "diffsort")


@dataclass
class MnistSortConfig:
    seed: int = 0
    method: Method = "quicksort"
    n: int = 5
    num_digits: int = 4
    # quicksort
    samples: int = 8
    certainty: float = 10.0
    proposal: Literal["gumbel", "uniform"] = "gumbel"
    quicksort_loss: Literal["ce", "mse"] = "ce"
    level_loss: bool = False
    # neuralsort
    tau: float = 1.0
    # diffsort
    steepness: float = 10.0
    distribution: str = "cauchy"
    # data and evaluation
    # Validation runs after every epoch of ``train_batches_per_epoch`` steps.
    train_batches_per_epoch: int = 200
    val_sequences: int = 500
    test_sequences: int = 10000
    # Sequences per forward pass in evaluation: small batches are faster on a CPU (a 500-sequence
    # batch is 1,500-7,500 images whose activations fall out of cache).
    eval_batch: int = 16
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=2, batch_size=16, lr=1e-3, log_every=10)
    )


class KeyNet(nn.Module):
    """The NeuralSort scoring CNN: conv5x5-32, pool, conv5x5-64, pool, fc64, fc1.

    Shape:
        (B, 1, H, W) -> (B,) with H, W multiples of 4 (112 x 28 here).
    """

    def __init__(self, height: int = 112, width: int = 28) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 64), nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))[:, 0]

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


class MnistSorter(nn.Module):
    """Keys for a batch of sequences of number images; the sort lives in the loss.

    Shape:
        (B, n, 1, H, W) -> keys (B, n).
    """

    def __init__(self, config: MnistSortConfig) -> None:
        super().__init__()
        self.keynet = KeyNet(28 * config.num_digits, 28)
        self.sorter = SortLayer(config.n, samples=config.samples, certainty=config.certainty,
                                proposal=config.proposal) if config.method == "quicksort" else None

    def forward(self, images: Tensor) -> Tensor:
        b, n = images.shape[:2]
        return self.keynet(images.flatten(0, 1)).view(b, n)  # (B, n)


def true_order(values: Tensor) -> Tensor:
    """(B, n) -> (B, n): the stable arg-sort, i.e. which input sits at each sorted position."""
    return torch.sort(values, dim=1, stable=True).indices


def sort_loss(model: MnistSorter, keys: Tensor, values: Tensor, config: MnistSortConfig,
              diffsort_net: Any = None) -> Tensor:
    """The method's training loss against the true order of ``values``."""
    b, n = values.shape
    order = true_order(values)  # (B, n)
    if config.method == "neuralsort":
        p = neuralsort(keys, tau=config.tau)  # (B, n, n): p[b, i, j] input j at position i
        return -torch.log(p.gather(2, order[..., None]).clamp_min(1e-12)).mean()
    if config.method == "diffsort":
        _, perm = diffsort_net(keys)  # (B, n, n): perm[b, j, i] input j at position i
        target = F.one_hot(order, n).transpose(1, 2).to(perm.dtype)  # (B, n, n)
        return F.binary_cross_entropy(perm.clamp(0.0, 1.0), target)
    assert model.sorter is not None
    rank = torch.argsort(order, dim=1)  # (B, n): true rank of each input
    if config.quicksort_loss == "ce":
        items = F.one_hot(rank, n).to(keys.dtype)  # (B, n, n) one-hot ranks (targets only)
    else:
        items = (rank.to(keys.dtype) / (n - 1))[..., None]  # (B, n, 1)
    out = model.sorter(items, keys, return_levels=config.level_loss)
    positions = torch.arange(n, device=keys.device)
    if not config.level_loss:
        return _rank_loss(out.values, positions, config.quicksort_loss)
    # Per-level targets: the level outputs of the hard sort of the true ranks.
    ideal = quicksort(items, rank.to(keys.dtype), hard=True, return_levels=True)
    losses = [_level_loss(lv.values, iv.values, n, config.quicksort_loss)
              for lv, iv in zip(out.levels, ideal.levels)]
    return torch.stack(losses).mean()


def _rank_loss(sorted_items: Tensor, positions: Tensor, kind: str) -> Tensor:
    n = positions.numel()
    if kind == "ce":  # sorted_items (B, n, n): distribution over true ranks per position
        picked = sorted_items.gather(2, positions.expand(sorted_items.shape[0], n)[..., None])
        return -torch.log(picked.clamp_min(1e-12)).mean()
    target = (positions.to(sorted_items.dtype) / (n - 1))[None, :, None]
    return F.mse_loss(sorted_items, target.expand_as(sorted_items))


def _level_loss(got: Tensor, want: Tensor, n: int, kind: str) -> Tensor:
    got, want = got[:, :n], want[:, :n]  # drop pad slots
    if kind == "ce":
        return -(want * torch.log(got.clamp_min(1e-12))).sum(-1).mean()
    return F.mse_loss(got, want)


@torch.no_grad()
def predicted_order(model: MnistSorter, keys: Tensor) -> Tensor:
    """Hard sort at evaluation: (B, n) keys -> (B, n) input index at each position."""
    if model.sorter is not None:
        was = model.sorter.training
        model.sorter.eval()
        idx = torch.arange(keys.shape[1], device=keys.device).expand_as(keys)
        order = model.sorter(idx, keys).values  # hard quicksort = stable arg-sort
        model.sorter.train(was)
        return order
    return torch.sort(keys, dim=1, stable=True).indices


@torch.no_grad()
def evaluate_sequences(model: MnistSorter, seqs: DigitSequences, batch: int,
                       device: torch.device) -> dict[str, float]:
    """``exact_match`` and ``element_accuracy`` of the hard sort on ``seqs``."""
    was = model.training
    model.eval()
    exact = correct = total = 0.0
    for i in range(0, len(seqs), batch):
        values = seqs.values[i : i + batch].to(device)  # (b, n)
        keys = model(seqs.images(i, i + batch).to(device))
        got = values.gather(1, predicted_order(model, keys))  # numbers in predicted order
        want = torch.sort(values, dim=1).values
        hit = got == want  # (b, n)
        exact += float(hit.all(1).sum())
        correct += float(hit.sum())
        total += values.shape[0]
    model.train(was)
    n = seqs.values.shape[1]
    return {"exact_match": exact / max(total, 1), "element_accuracy": correct / max(total * n, 1)}


@register_experiment("mnist-sort", help="sort 4-digit MNIST numbers: quicksort/neuralsort/diffsort")
class MnistSort(Experiment):
    Config = MnistSortConfig
    presets = {
        # NeuralSort's optimiser (Adam, lr 1e-4) over a longer run.
        "full": {"train.epochs": 100, "train.lr": 1e-4, "train_batches_per_epoch": 200},
        # The CPU budget of docs/sorting.md: 4,000 steps, Adam lr 3e-3 (100 warm-up steps),
        # cosine decay, validation on 1,000 sequences every 400 steps (lr chosen on validation).
        "cpu4k": {"train.epochs": 10, "train_batches_per_epoch": 400, "train.lr": 3e-3,
                  "train.warmup_steps": 100, "train.schedule": "cosine", "val_sequences": 1000},
        # The same recipe over 20,000 steps (~65 minutes of one core at n = 3).
        "cpu20k": {"train.epochs": 50, "train_batches_per_epoch": 400, "train.lr": 3e-3,
                   "train.warmup_steps": 100, "train.schedule": "cosine", "val_sequences": 1000},
    }

    def _check(self, config: MnistSortConfig) -> None:
        if config.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
        if config.n < 2:
            raise ValueError(f"n must be >= 2, got {config.n}")

    def _model(self, config: MnistSortConfig, ctx: RunContext) -> MnistSorter:
        return MnistSorter(config).to(ctx.device)

    def run(self, config: MnistSortConfig, ctx: RunContext) -> dict[str, Any]:
        self._check(config)
        train_digits = digits("mnist", "train")
        val = digit_sequences(digits("mnist", "val"), config.val_sequences, config.n,
                              num_digits=config.num_digits, generator=ctx.generator("val"))
        model = self._model(config, ctx)
        net = None
        if config.method == "diffsort":
            from diffsort import DiffSortNet

            net = DiffSortNet("odd_even", config.n, device=str(ctx.device),
                              steepness=config.steepness, distribution=config.distribution)

        def make(batch_size: int, g: torch.Generator) -> tuple[Tensor, ...]:
            seqs = digit_sequences(train_digits, batch_size, config.n,
                                   num_digits=config.num_digits, generator=g)
            return sequence_images(train_digits, seqs.index), seqs.values

        source = SyntheticBatches(make, config.train.batch_size, config.train_batches_per_epoch,
                                  seed=config.seed)

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            images, values = batch
            assert isinstance(m, MnistSorter)
            return sort_loss(m, m(images), values, config, net)

        def validate(m: nn.Module) -> dict[str, float]:
            assert isinstance(m, MnistSorter)
            r = evaluate_sequences(m, val, config.eval_batch, ctx.device)
            return {f"val_{k}": v for k, v in r.items()}

        result = ctx.fit(model, loss_fn, source, config=config.train, validate=validate,
                         select="val_exact_match", mode="max")
        summary = self.evaluate(config, ctx, model)
        summary.update(best_step=result.best_step, train_seconds=result.train_seconds)
        return summary

    def evaluate(self, config: MnistSortConfig, ctx: RunContext,
                 model: MnistSorter | None = None) -> dict[str, Any]:
        self._check(config)
        if model is None:
            loaded = ctx.load_best(self._model(config, ctx))
            assert isinstance(loaded, MnistSorter)
            model = loaded
        test_digits = digits("mnist", "test")
        test = digit_sequences(test_digits, config.test_sequences, config.n,
                               num_digits=config.num_digits, generator=ctx.generator("test"))
        r = evaluate_sequences(model, test, config.eval_batch, ctx.device)
        train_size = len(digits("mnist", "train"))
        return {
            "method": config.method,
            "n": config.n,
            "exact_match": r["exact_match"],
            "element_accuracy": r["element_accuracy"],
            "test_sequences": config.test_sequences,
            "train_digits": train_size,
            "data_source": test_digits.source,
            "params": count_parameters(model),
            "chance_exact_match": 1.0 / math.factorial(config.n),
        }
