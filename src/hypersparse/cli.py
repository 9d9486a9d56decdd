"""The ``hypersparse`` command: ``list``, ``run``, ``eval``, ``report`` and plug-in commands."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "PLUGINS"]

# Modules that add subcommands through their ``add_commands(subparsers)``.
PLUGINS = ("hypersparse.report", "hypersparse.compress.cli")


def _cmd_list(args: argparse.Namespace) -> int:
    from .experiments import load_all

    experiments = load_all()
    width = max((len(n) for n in experiments), default=0)
    for name in sorted(experiments):
        print(f"{name:<{width}}  {experiments[name].help}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import parse_seeds, run_experiment

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    run_dir = run_experiment(
        args.name,
        args.set,
        seeds=seeds,
        out=args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        print(json.dumps(summary, indent=2))
        print(f"run directory: {run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .run import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, device=args.device), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypersparse", description="Learning sparse neural networks: experiments and tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered experiments")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run an experiment")
    p.add_argument("name", help="experiment name (see `hypersparse list`)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, repeatable); preset=NAME applies first",
    )
    p.add_argument("--seeds", help="run several seeds, e.g. 0-4 or 1,3,7, and aggregate")
    p.add_argument("--out", help="run directory (default runs/NAME-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("eval", help="re-evaluate a finished run from its best checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_eval)

    for module in PLUGINS:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"hypersparse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hypersparse: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
