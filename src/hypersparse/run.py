"""Run directories: one place that seeds, writes and aggregates runs.

A run directory holds ``config.json`` (resolved), ``env.json``, ``metrics.jsonl``,
``summary.json``, PNG plots and ``checkpoints/<stage>/{last,best}.pt``. Several seeds go into
``seed-<s>/`` subdirectories with an aggregated ``summary.json`` (median, mean and std of every
numeric key) at the top.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import apply_overrides, config_from_dict, config_to_dict, parse_assignment
from .io import append_jsonl, atomic_write_bytes, atomic_write_json, load_checkpoint, read_jsonl
from .train import _barrier

__all__ = [
    "RunContext",
    "resolve_device",
    "parse_seeds",
    "resolve_config",
    "run_experiment",
    "evaluate_run",
    "aggregate_summaries",
    "environment",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available")
        return torch.device(name)
    raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")


def _distributed(device: str) -> tuple[int, int, torch.device, bool]:
    """Rank, world size, device and whether this call created the process group.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) joins the group: gloo on CPU, nccl on CUDA (one GPU
    per local rank).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return 0, 1, dev, False
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev, created


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"1,3,7"`` -> [1, 3, 7]; ``"2"`` -> [2]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("", part)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds must look like 0-4 or 1,3,7, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, git commit, threads and device, for ``env.json``."""
    import numpy

    from . import __version__

    return {
        "hypersparse": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "argv": sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class RunContext:
    """Everything an experiment needs from the runner: where to write, which seed and device.

    Experiments call :meth:`fit` (the training loop), :meth:`log`, :meth:`save_figure` and
    :meth:`load_best`; only the main process writes files.
    """

    run_dir: Path
    config: Any
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume: bool = False
    progress: bool = True
    rank: int = 0
    world_size: int = 1
    _tb: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def generator(self, *parts: int | str) -> torch.Generator:
        """A torch generator seeded from ``(seed, *parts)``, for data and evaluation sets."""
        from .train import derive_seed

        return torch.Generator().manual_seed(derive_seed(self.seed, *parts))

    def log(self, record: Mapping[str, Any]) -> None:
        """Append a metrics record (and TensorBoard scalars when tensorboard is installed)."""
        if not self.is_main:
            return
        append_jsonl(self.metrics_path, record)
        tb = self._tensorboard()
        if tb is not None and "step" in record:
            prefix = f"{record.get('stage', 'run')}/{record.get('split', 'train')}"
            for k, v in record.items():
                if k not in ("step", "stage", "split") and isinstance(v, int | float):
                    tb.add_scalar(f"{prefix}/{k}", v, int(record["step"]))

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb or None

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        self._tb = None

    def metrics_lines(self) -> int:
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path, "rb") as f:
            return sum(1 for _ in f)

    def truncate_metrics(self, lines: int) -> None:
        """Drop metrics written after the checkpoint a resumed run starts from."""
        if not self.is_main or not self.metrics_path.exists():
            return
        with open(self.metrics_path, "rb") as f:
            kept = f.readlines()[:lines]
        atomic_write_bytes(self.metrics_path, b"".join(kept))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as ``<run_dir>/<name>.png`` atomically and close it."""
        import matplotlib.pyplot as plt

        path = self.run_dir / (name if name.endswith(".png") else name + ".png")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        if self.is_main:
            atomic_write_bytes(path, buf.getvalue())
        return path

    def fit(self, model: nn.Module, loss_fn: Any, train: Any, **kwargs: Any) -> Any:
        """Run :func:`hypersparse.train.fit` in this context."""
        from .train import fit

        return fit(model, loss_fn, train, ctx=self, **kwargs)

    def load_best(self, model: nn.Module, stage: str = "model") -> nn.Module:
        """Load the best checkpoint of ``stage`` into ``model``."""
        ckpt = load_checkpoint(self.run_dir / "checkpoints" / stage / "best.pt", self.device)
        model.load_state_dict(ckpt["model"])
        return model


def resolve_config(exp_cls: Any, assignments: Sequence[str]) -> tuple[Any, str | None]:
    """Build an experiment's config from ``--set`` strings; ``preset`` is applied first."""
    pairs = [parse_assignment(a) for a in assignments]
    presets = getattr(exp_cls, "presets", {})
    preset = None
    for key, value in pairs:
        if key == "preset":
            if value not in presets:
                valid = ", ".join(sorted(presets)) or "(none)"
                raise ValueError(f"unknown preset {value!r} for {exp_cls.name}; valid: {valid}")
            preset = value
    config = exp_cls.Config()
    if preset is not None:
        config = apply_overrides(config, presets[preset])
    return apply_overrides(config, [(k, v) for k, v in pairs if k != "preset"]), preset


def aggregate_summaries(summaries: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Median, mean and std (population; 0 for one seed) of every numeric summary key.

    Booleans count as 0/1; ``None`` values are left out of that key's statistics.
    """
    keys: list[str] = []
    for s in summaries.values():
        keys.extend(k for k in s if k not in keys)
    out: dict[str, Any] = {"seeds": sorted(summaries)}
    for key in keys:
        values = [s.get(key) for s in summaries.values()]
        nums = [float(v) for v in values if isinstance(v, int | float) and v is not None]
        if nums:
            out[f"{key}.median"] = statistics.median(nums)
            out[f"{key}.mean"] = statistics.fmean(nums)
            out[f"{key}.std"] = statistics.pstdev(nums) if len(nums) > 1 else 0.0
            out[f"{key}.n"] = len(nums)
        elif all(isinstance(v, str) for v in values) and len(set(values)) == 1:
            out[key] = values[0]
    return out


def _default_out(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _run_one(
    exp: Any,
    config: Any,
    preset: str | None,
    run_dir: Path,
    seed: int,
    device: torch.device,
    resume: bool,
    progress: bool,
    assignments: Sequence[str],
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    config_path = run_dir / "config.json"
    if config_path.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or another --out")
    if resume and config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved["config"] != json.loads(json.dumps(config_to_dict(config))):
            raise ValueError(f"--resume: the config differs from the one saved in {config_path}")
    _barrier(world)  # every rank has checked before rank 0 writes
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ctx = RunContext(
        run_dir=run_dir,
        config=config,
        seed=seed,
        device=device,
        resume=resume,
        progress=progress,
        rank=rank,
        world_size=world,
    )
    if ctx.is_main:
        atomic_write_json(
            config_path,
            {
                "experiment": exp.name,
                "preset": preset,
                "overrides": list(assignments),
                "config": config_to_dict(config),
            },
        )
        atomic_write_json(run_dir / "env.json", environment(device))
    try:
        summary = dict(exp.run(config, ctx))
    finally:
        ctx.close()
    if ctx.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
        from .plotting import plot_training_curves

        plot_training_curves(ctx)
    return summary


def run_experiment(
    name: str,
    assignments: Sequence[str] = (),
    *,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Run a registered experiment; returns the run directory.

    Args:
        name: a registered experiment (``hypersparse list``).
        assignments: ``key=value`` overrides of the experiment's config (``preset=...`` first).
        seeds: run each seed in ``seed-<s>/`` and aggregate; None uses the config's ``seed``.
        out: the run directory (default ``runs/<name>-<timestamp>``).
        resume: continue an interrupted run in ``out`` from its last checkpoints.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    from .experiments import get_experiment

    exp = get_experiment(name)()
    config, preset = resolve_config(type(exp), assignments)
    if resume and out is None:
        raise ValueError("--resume needs --out DIR (the run to continue)")
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun, pass --out DIR (every rank must agree on it)")
    run_dir = Path(out) if out is not None else _default_out(name)
    rank, world, dev, created = _distributed(device)
    try:
        if seeds is None or len(seeds) == 1:
            if seeds:
                config = apply_overrides(config, {"seed": seeds[0]})
            _run_one(
                exp,
                config,
                preset,
                run_dir,
                config.seed,
                dev,
                resume,
                progress,
                assignments,
                rank,
                world,
            )
            _barrier(world)
            return run_dir
        summaries = {}
        for s in seeds:
            cfg = apply_overrides(config, {"seed": s})
            summaries[s] = _run_one(
                exp,
                cfg,
                preset,
                run_dir / f"seed-{s}",
                s,
                dev,
                resume,
                progress,
                assignments,
                rank,
                world,
            )
        if rank == 0:
            atomic_write_json(run_dir / "summary.json", aggregate_summaries(summaries))
        _barrier(world)
        return run_dir
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def evaluate_run(run_dir: str | os.PathLike[str], device: str = "auto") -> dict[str, Any]:
    """Re-evaluate a finished run from its best checkpoint(s); writes ``eval.json``."""
    from .experiments import get_experiment

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        seed_dirs = sorted(run_dir.glob("seed-*/config.json"))
        if not seed_dirs:
            raise FileNotFoundError(f"{run_dir} holds no config.json (not a run directory)")
        results = {
            int(p.parent.name.split("-")[1]): evaluate_run(p.parent, device) for p in seed_dirs
        }
        agg = aggregate_summaries(results)
        atomic_write_json(run_dir / "eval.json", agg)
        return agg
    saved = json.loads(config_path.read_text())
    exp = get_experiment(saved["experiment"])()
    config = config_from_dict(type(exp).Config, saved["config"])
    ctx = RunContext(
        run_dir=run_dir,
        config=config,
        seed=config.seed,
        device=resolve_device(device),
        resume=True,
        progress=False,
    )
    try:
        result = dict(exp.evaluate(config, ctx))
    finally:
        ctx.close()
    atomic_write_json(run_dir / "eval.json", result)
    return result
