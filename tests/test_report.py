"""Run reports: content of the page, comparisons, and a real headless-browser render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import toy  # noqa: F401  (registers the "toy" experiment)
from hypersparse.cli import main
from hypersparse.plotting import figure
from hypersparse.report import differing_config, load_run, write_report
from hypersparse.run import RunContext, run_experiment


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    a = run_experiment("toy", ["train.epochs=1"], out=base / "a", progress=False)
    b = run_experiment("toy", ["train.epochs=2", "width=8"], out=base / "b", progress=False)
    fig, ax = figure()
    ax.plot([0, 1], [1, 0])
    RunContext(run_dir=a, config=None).save_figure(fig, "extra_plot")
    return a, b


def _images(page: str) -> int:
    return len(re.findall(r"src='data:image/png;base64,", page))


def test_single_run_page_has_every_plot_summary_key_and_config(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    html_path, md_path = write_report([a])
    page = html_path.read_text()
    run = load_run(a)
    assert _images(page) == len(run.plots) + 1 == 3  # curves.png, extra_plot.png + fresh curves
    for key in run.summary:
        assert f"<td>{key}</td>" in page
    for key in ("train.lr", "width", "experiment"):
        assert f"<td>{key}</td>" in page
    assert "torch" in page and "http://" not in page and "https://" not in page
    md = md_path.read_text()
    assert "## Summary" in md and md.count("![") == 3
    for img in re.findall(r"\]\((\S+\.png)\)", md):
        assert (md_path.parent / img).exists()


def test_comparison_shows_differing_config_keys(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    assert differing_config([load_run(a), load_run(b)]) == ["train.epochs", "width"]
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert "<th>config: train.epochs</th>" in page and "<th>config: width</th>" in page
    assert "<th>config: train.lr</th>" not in page
    assert "<td>a</td>" in page and "<td>b</td>" in page and "<th>val_loss</th>" in page


def test_multi_seed_run_and_bad_dir(tmp_path: Path) -> None:
    out = run_experiment(
        "toy", ["train.epochs=1"], seeds=[0, 1], out=tmp_path / "s", progress=False
    )
    html_path, _ = write_report([out])
    page = html_path.read_text()
    assert "val_loss.median" in page and _images(page) == 3  # 2 seeds' curves + fresh curves
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        write_report([tmp_path])
    with pytest.raises(ValueError, match="at least one"):
        write_report([])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_page_renders_in_headless_chromium(runs: tuple[Path, Path], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        msg = "Chromium is not installed (.ci/run installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    html_path, _ = write_report(list(runs), tmp_path / "page.html")
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Comparison of 2 runs" in dom.stdout and "val_loss" in dom.stdout
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,1600", html_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a blank page compresses to far less
