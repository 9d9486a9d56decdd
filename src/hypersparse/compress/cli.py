"""``hypersparse compress`` and ``hypersparse decompress``.

Wired into the main CLI by listing ``"hypersparse.compress.cli"`` in ``hypersparse.cli.PLUGINS``
(it calls :func:`add_commands`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from ..io import load_checkpoint, save_checkpoint
from .fileformat import compress_state_dict, decompress

__all__ = ["add_commands", "cmd_compress", "cmd_decompress", "load_source"]


def load_source(source: str | os.PathLike[str], stage: str | None = None,
                which: str = "best") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and metadata of a run directory's checkpoint or of a ``.pt`` file.

    A run directory (holding ``config.json``) gives ``checkpoints/<stage>/<which>.pt``; the
    stage defaults to ``model`` or the only one there. A checkpoint file may hold
    ``{"model": state_dict, ...}`` or a bare state dict.
    """
    path = Path(source)
    meta: dict[str, Any] = {"source": str(path)}
    if path.is_dir():
        config = path / "config.json"
        if not config.exists():
            raise FileNotFoundError(f"{path} holds no config.json (not a run directory)")
        saved = json.loads(config.read_text())
        stages = sorted(p.name for p in (path / "checkpoints").glob("*") if p.is_dir())
        if stage is None:
            if "model" in stages or len(stages) != 1:
                stage = "model"
            else:
                stage = stages[0]
        if stage not in stages:
            raise ValueError(f"no checkpoints for stage {stage!r} in {path}; stages: {stages}")
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
        ckpt = load_checkpoint(path / "checkpoints" / stage / f"{which}.pt")
        meta.update(experiment=saved.get("experiment"), config=saved.get("config"),
                    stage=stage, checkpoint=which)
    else:
        ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (expected {{'model': state_dict}} or "
                         "a mapping of tensors)")
    return dict(state), meta


def cmd_compress(args: argparse.Namespace) -> int:
    """Handler of ``hypersparse compress``; prints a JSON summary."""
    state, meta = load_source(args.source, args.stage, args.checkpoint)
    summary = compress_state_dict(
        state, args.out, metadata=meta,
        index_bits={"linear": args.linear_bits, "conv": args.conv_bits},
        cluster_bits=args.cluster_bits,
    )
    out = {"out": str(args.out), "file_bytes": summary.file_bytes,
           "dense_bytes": summary.dense_bytes, "ratio": round(summary.ratio, 3),
           "lossless": args.cluster_bits is None,
           "records": [r.__dict__ for r in summary.records] if args.verbose else
           len(summary.records)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    """Handler of ``hypersparse decompress``: writes ``{"model": state_dict, "metadata": ...}``
    (loadable with ``hypersparse.io.load_checkpoint``) or, without ``--out``, prints the
    contents."""
    state, meta = decompress(args.file)
    info = {"file": str(args.file), "tensors": len(state),
            "parameters": sum(v.numel() for v in state.values()),
            "metadata": {k: v for k, v in meta.items() if k != "config"}}
    if args.out:
        save_checkpoint({"model": state, "metadata": json.dumps(meta)}, args.out)
        info["out"] = str(args.out)
    print(json.dumps(info, indent=2))
    return 0


def _configure_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="MODEL_OR_RUN_DIR",
                   help="a run directory or a checkpoint (.pt) file")
    p.add_argument("--out", required=True, help="the compressed file to write (.hsz)")
    p.add_argument("--stage", help="run directory: training stage (default: model)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--linear-bits", type=int, default=5, help="relative-index bits, 2-d weights")
    p.add_argument("--conv-bits", type=int, default=8, help="relative-index bits, conv weights")
    p.add_argument("--cluster-bits", type=int, default=None,
                   help="k-means weights into 2^B shared values first (lossy)")
    p.add_argument("--verbose", action="store_true", help="list every record")


def _configure_decompress(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a compressed file written by `hypersparse compress`")
    p.add_argument("--out", help="write the state dict as a checkpoint (.pt)")


_COMMANDS = {
    "compress": (_configure_compress, cmd_compress,
                 "store a model in as few bytes as possible (Deep Compression format)"),
    "decompress": (_configure_decompress, cmd_decompress,
                   "read a compressed model back into a checkpoint"),
}


def add_commands(subparsers: Any) -> None:
    """Add ``compress`` and ``decompress`` to an argparse ``subparsers`` object."""
    for name, (configure, handler, help_text) in _COMMANDS.items():
        p = subparsers.add_parser(name, help=help_text)
        configure(p)
        p.set_defaults(func=handler)

