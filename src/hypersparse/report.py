"""Run reports: one self-contained HTML page (and a markdown twin) per run or per comparison.

``hypersparse report RUN_DIR [RUN_DIR ...] [--out FILE]`` collects the resolved config, the
environment, every summary key, the loss and metric curves and every plot a run wrote. Several
runs give one comparison table (a row per run, a column per summary key, plus the config keys
that differ) and overlaid curves. Images are embedded as data URIs, so the page needs no network
and no neighbouring files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_text, read_jsonl

__all__ = ["Run", "load_run", "write_report", "differing_config"]


@dataclass
class Run:
    """What a report shows of one run directory."""

    path: Path
    name: str
    config: dict[str, Any]
    env: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run directory (single seed, or several seeds in ``seed-*/``).

    Raises:
        FileNotFoundError: if ``path`` is not a run directory.
    """
    path = Path(path)
    seed_dirs = sorted(p for p in path.glob("seed-*") if (p / "config.json").exists())
    first = path if (path / "config.json").exists() else (seed_dirs[0] if seed_dirs else None)
    if first is None:
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    saved = _read_json(first / "config.json")
    config = {
        "experiment": saved.get("experiment"),
        "preset": saved.get("preset"),
        **_flatten(saved.get("config", {})),
    }
    if seed_dirs:
        config.pop("seed", None)
    plots = sorted(path.glob("*.png")) + [p for d in seed_dirs for p in sorted(d.glob("*.png"))]
    metrics = read_jsonl(first / "metrics.jsonl")
    return Run(
        path=path,
        name=path.name,
        config=config,
        env=_read_json(first / "env.json"),
        summary=_read_json(path / "summary.json"),
        metrics=metrics,
        plots=plots,
    )


def differing_config(runs: list[Run]) -> list[str]:
    """Config keys whose values are not the same in every run."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def _curves_png(runs: list[Run]) -> bytes | None:
    """Training loss and validation metrics over steps, one line per run and stage."""
    from .plotting import figure

    train: dict[str, list[tuple[float, float]]] = defaultdict(list)
    val: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for m in r.metrics:
            label = r.name if len(runs) > 1 else ""
            stage = m.get("stage", "model")
            key = f"{label} {stage}".strip()
            if m.get("split") == "train" and isinstance(m.get("loss"), int | float):
                train[key].append((m["step"], m["loss"]))
            elif m.get("split") == "val":
                for k, v in m.items():
                    if k not in ("stage", "split", "step", "epoch") and isinstance(v, int | float):
                        val[k][key].append((m["step"], v))
    if not train and not val:
        return None
    panels = (1 if train else 0) + len(val)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = figure(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    i = 0
    if train:
        for key, pts in train.items():
            flat[i].plot(*zip(*pts), label=key or None)
        flat[i].set(title="training loss", xlabel="step")
        if all(v > 0 for pts in train.values() for _, v in pts):
            flat[i].set_yscale("log")
        if len(train) > 1:
            flat[i].legend(fontsize=7)
        i += 1
    for metric, series in val.items():
        for key, pts in series.items():
            flat[i].plot(*zip(*pts), marker="o", ms=3, label=key or None)
        flat[i].set(title=metric, xlabel="step")
        if len(series) > 1:
            flat[i].legend(fontsize=7)
        i += 1
    for ax in flat[i:]:
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(_fmt(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;
border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
figure{margin:1rem 0}figcaption{font-size:.8rem;color:#555}
"""


def write_report(
    run_dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write the HTML report and its markdown twin; returns ``(html_path, md_path)``.

    Args:
        run_dirs: one or more run directories.
        out: the HTML file to write (default ``RUN_DIR/report.html`` for one run, else
            ``report.html`` in the working directory). The markdown twin goes next to it with
            ``.md``, its images into ``<stem>_files/``.
    """
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if len({r.name for r in runs}) < len(runs):  # same leaf names: use the full paths
        for r in runs:
            r.name = str(r.path)
    html_path = (
        Path(out)
        if out
        else (runs[0].path / "report.html" if len(runs) == 1 else Path("report.html"))
    )
    md_path = html_path.with_suffix(".md")
    files_dir = html_path.with_name(html_path.stem + "_files")
    files_dir.mkdir(parents=True, exist_ok=True)

    images: list[tuple[str, bytes]] = []
    curves = _curves_png(runs)
    if curves is not None:
        images.append(("curves (from metrics.jsonl)", curves))
    for r in runs:
        for p in r.plots:
            label = f"{r.name}: {p.relative_to(r.path)}"
            images.append((label, p.read_bytes()))

    title = ("Run " + runs[0].name) if len(runs) == 1 else f"Comparison of {len(runs)} runs"
    h = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    md = [f"# {title}", ""]

    summary_keys = list(dict.fromkeys(k for r in runs for k in r.summary))
    if len(runs) > 1:
        diff = differing_config(runs)
        header = ["run", *[f"config: {k}" for k in diff], *summary_keys]
        rows = [
            [
                r.name,
                *[r.config.get(k) for k in diff],
                *[r.summary.get(k, "") for k in summary_keys],
            ]
            for r in runs
        ]
        h += ["<h2>Comparison</h2>", _html_table(header, rows)]
        md += ["## Comparison", "", _md_table(header, rows), ""]
    for r in runs:
        prefix = f" ({r.name})" if len(runs) > 1 else ""
        srows = [[k, v] for k, v in r.summary.items()]
        crows = [[k, v] for k, v in r.config.items()]
        erows = [[k, v] for k, v in r.env.items()]
        for name, rows in (("Summary", srows), ("Config", crows), ("Environment", erows)):
            h += [f"<h2>{name}{html.escape(prefix)}</h2>", _html_table(["key", "value"], rows)]
            md += [f"## {name}{prefix}", "", _md_table(["key", "value"], rows), ""]

    h.append("<h2>Plots</h2>")
    md += ["## Plots", ""]
    for i, (label, data) in enumerate(images):
        b64 = base64.b64encode(data).decode("ascii")
        h.append(
            f"<figure><img alt='{html.escape(label, quote=True)}' "
            f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(label)}"
            "</figcaption></figure>"
        )
        fname = f"{i:02d}.png"
        atomic_write_bytes(files_dir / fname, data)
        md += [f"![{label}]({files_dir.name}/{fname})", ""]
    h.append("</body></html>")
    atomic_write_text(html_path, "\n".join(h))
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path


def add_commands(sub: Any) -> None:
    """Add ``report`` to the CLI's subparsers."""
    p = sub.add_parser("report", help="one HTML page (and markdown) for one or several runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="HTML file to write")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: Any) -> int:
    html_path, md_path = write_report(args.run_dirs, args.out)
    print(f"wrote {html_path} and {md_path}")
    return 0
