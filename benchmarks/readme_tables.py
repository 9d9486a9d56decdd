"""Generate the README's tables from ``results/*.json``; ``--check`` fails if they are stale.

A results file may hold ``"tables": {NAME: {"columns": [...], "rows": [[...], ...]}}``; each is
rendered between ``<!-- table:FILE/NAME -->`` and ``<!-- /table:FILE/NAME -->`` in README.md,
where FILE is the results file's stem. Numbers are never typed into the README by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def render(table: dict[str, Any]) -> str:
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    if table.get("note"):
        lines += ["", table["note"]]
    return "\n".join(lines)


def _huffman(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [[r["data"], r["symbols"], r["bits_per_symbol"], r["decode_msym_per_s"],
             r["dahuffman_decode_msym_per_s"], r["speedup_vs_dahuffman"]] for r in d["rows"]]
    return {"decode": {"columns": ["symbols", "n", "bits / symbol", "decode M sym/s",
                                   "dahuffman M sym/s", "speed-up"], "rows": rows}}


def _compress2(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [[r["method"], "yes" if r["finetuned"] else "no", r["test_accuracy"], r["kilobytes"],
             r["ratio"]] for r in d["rows"]]
    return {"methods": {"columns": ["method", "fine-tuned", "test accuracy", "KB", "x smaller"],
                        "rows": rows}}


def _hyperlayer(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    linear = {r["n"]: r["cpu_ms"] for r in d["linear"]}
    def pairs(r: dict[str, Any]) -> str:
        if r.get("pair_fraction") is None:  # the Chebyshev transform: a grid, no pairs
            return "none: " + " x ".join(map(str, r["chebyshev_nodes"])) + " Chebyshev grid"
        return f"{100 * r['pair_fraction']:.3g}%"

    rows = [[r["n"], r["state"], r["method"], pairs(r), r["cpu_ms"], r["original_ms"],
             f"{r['speedup_cpu']:.1f}x", linear.get(r["n"])] for r in d["vs_original"]]
    out = {"speed": {"columns": ["n (K = n)", "state", "normalisation", "pairs evaluated",
                                 "CPU ms / step", "2019 code ms", "speed-up", "nn.Linear CPU ms"],
                     "rows": rows}}
    if "crossover" in d:
        out["crossover"] = {
            "columns": ["n = K", "sigma (cells)", "boxes cover", "exact CPU ms",
                        "Chebyshev CPU ms", "neighbours CPU ms", "auto picks"],
            "rows": [[r["n"], r["sigma_cells"], f"{100 * r['cover']:.2g}%", r["exact_cpu_ms"],
                      "n/a" if r.get("chebyshev_cpu_ms") is None else r["chebyshev_cpu_ms"],
                      r["neighbours_cpu_ms"], r["auto"]] for r in d["crossover"]]}
    return out


def _kwinners(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [[r["layer"], r["width"], r["k"], r["kwta_cpu_us"], r["topk_cpu_us"],
             r["cpu_kwta_over_topk"], r["cpu_kwta_over_topk_unsorted"], r["relu_cpu_us"]]
            for r in d["rows"]]
    return {"speed": {"columns": ["layer", "width", "k", "k-WTA CPU us", "topk CPU us",
                                  "vs topk", "vs topk (unsorted)", "ReLU CPU us"], "rows": rows}}


def _deep_compression(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = []
    for v in d["models"].values():
        m, sd = v["mean"], v["std"]
        sets = [o for o in v["per_seed"]["0"]["overrides"] if not o.startswith("seed=")]
        rows.append([" ".join(f"`{o}`" for o in sets), len(v["seeds"]),
                     f"{100 * m['dense_accuracy']:.2f}%", f"{100 * m['final_accuracy']:.2f}%",
                     f"{m['error_increase_points']:.2f}", round(m["file_bytes"]),
                     f"{m['compression_ratio']:.1f}x ± {sd['compression_ratio']:.1f}"])
    return {"pipeline": {"columns": ["--set", "seeds", "dense test", "final test",
                                     "error + (points)", "file bytes", "smaller"], "rows": rows}}


def _csr(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [[f"{r['shape'][0]}x{r['shape'][1]}", r["batch"], r["density"],
             1e6 * r["dense_median_s"], 1e6 * r["csr_int32_median_s"], r["speedup_int32"]]
            for r in d["rows"]]
    return {"speed": {"columns": ["W", "batch", "density", "dense us", "CSR us", "CSR speed-up"],
                      "rows": rows}}


_GLIMPSE60 = "hypersparse run glimpse --threads 1 --set preset=full --set cnn=false --set " \
    "stn=false --set train.epochs=60"


def _glimpse(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `full` preset at 60 epochs, one row per variant (its `--set`s beyond the base
    command), one column per seed: test error at the best-validation epoch."""
    variants: dict[str, dict[int, dict[str, Any]]] = {}
    for run in d["runs"]:
        cmd = run["command"]
        if not cmd.startswith(_GLIMPSE60):
            continue
        sets = cmd[len(_GLIMPSE60):].split("--set")
        seed = next((int(s.split("=")[1]) for s in sets if s.strip().startswith("seed=")), 0)
        extra = " ".join(f"`{s.strip()}`" for s in sets
                         if s.strip() and not s.strip().startswith("seed="))
        variants.setdefault(extra or "(the preset)", {})[seed] = run["summary"]
    seeds = sorted({s for v in variants.values() for s in v})
    rows = []
    for name, by_seed in variants.items():
        errs = [by_seed[s]["test_error"] for s in seeds if s in by_seed]
        # counted in images: 100 of 5,000 is stored as 0.0199999..., and is not below 2%
        below = sum(round(v["test_error"] * v["test_images"]) < 0.02 * v["test_images"]
                    for v in by_seed.values())
        pix = [by_seed[s]["pixels_read_fraction"] for s in seeds if s in by_seed]
        rows.append([name] + [f"{100 * by_seed[s]['test_error']:.2f}%" if s in by_seed else "-"
                              for s in seeds]
                    + [f"{100 * sum(errs) / len(errs):.3f}%" if len(errs) == len(seeds) else "-",
                       f"{below} of {len(errs)}",
                       f"{100 * max(pix):.2f}%"])
    return {"seeds60": {
        "columns": ["`--set` beyond the preset at 60 epochs"] + [f"seed {s}" for s in seeds]
        + ["mean", "below 2%", "pixels read (max)"],
        "rows": rows,
        "note": f"Test error at the best-validation epoch; command: `{_GLIMPSE60} "
                "[--set ...] --set seed=S` (results/glimpse.json)."}}


# Results files written before the "tables" convention get a renderer here.
RENDERERS = {"huffman": _huffman, "compress2": _compress2, "hyperlayer": _hyperlayer,
             "kwinners": _kwinners, "deep_compression": _deep_compression, "csr": _csr,
             "glimpse": _glimpse}


def tables() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "results").glob("*.json")):
        data = json.loads(path.read_text())
        found = dict(data.get("tables", {}))
        if path.stem in RENDERERS:
            found.update(RENDERERS[path.stem](data))
        for name, table in found.items():
            out[f"{path.stem}/{name}"] = render(table)
    return out


def update(text: str, rendered: dict[str, str]) -> tuple[str, list[str]]:
    missing = []

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in rendered:
            missing.append(key)
            return m.group(0)
        return f"<!-- table:{key} -->\n{rendered[key]}\n<!-- /table:{key} -->"

    pattern = re.compile(r"<!-- table:(\S+) -->.*?<!-- /table:\1 -->", re.S)
    return pattern.sub(sub, text), missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    text = README.read_text()
    new, missing = update(text, tables())
    if missing:
        print(f"README refers to tables with no results: {missing}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(
                "README tables are stale: run python benchmarks/readme_tables.py", file=sys.stderr
            )
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
