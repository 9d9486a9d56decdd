"""The CLI contract, --seeds aggregation and bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import toy  # noqa: F401  (registers the "toy" experiment)
from hypersparse.cli import main
from hypersparse.io import load_checkpoint
from hypersparse.run import aggregate_summaries, parse_seeds, run_experiment


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "model" / "last.pt")["model"]


def test_list_shows_registered_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mnist-mlp" in out and "toy" in out and "test-only regression" in out


def test_unknown_experiment_lists_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "nope", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "mnist-mlp" in err and "toy" in err


def test_unknown_key_and_preset_list_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "toy", "--set", "widht=3", "--out", str(tmp_path / "a")]) == 2
    assert "valid keys:" in capsys.readouterr().err
    assert main(["run", "toy", "--set", "preset=huge", "--out", str(tmp_path / "b")]) == 2
    assert "valid: big" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_writes_the_run_directory_contract(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "toy",
                "--quiet",
                "--out",
                str(out),
                "--set",
                "preset=big",
                "--set",
                "train.epochs=1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    for name in (
        "config.json",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "checkpoints/model/best.pt",
        "checkpoints/model/last.pt",
    ):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "toy" and config["preset"] == "big"
    assert config["config"]["width"] == 64 and config["config"]["train"]["epochs"] == 1
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "python", "git_commit", "torch_threads", "device"} <= set(env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["width"] == 64
    # a second run into the same directory is refused; eval re-computes from the best checkpoint
    assert main(["run", "toy", "--quiet", "--out", str(out)]) == 2
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "eval.json").read_text())["val_loss"] == pytest.approx(
        summary["val_loss"]
    )


def test_seeds_aggregate_median_mean_std(tmp_path: Path) -> None:
    out = run_experiment(
        "toy", ["train.epochs=1"], seeds=[0, 1, 2], out=tmp_path / "s", progress=False
    )
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in range(3)]
    agg = json.loads((out / "summary.json").read_text())
    vals = sorted(s["val_loss"] for s in per_seed)
    assert agg["seeds"] == [0, 1, 2]
    assert agg["val_loss.median"] == pytest.approx(vals[1])
    assert agg["val_loss.mean"] == pytest.approx(sum(vals) / 3)
    assert agg["val_loss.std"] > 0 and agg["width.std"] == 0 and agg["converged.mean"] == 1
    assert agg["name"] == "toy"
    assert len({s["val_loss"] for s in per_seed}) == 3  # the seeds really differ


def test_threads_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        assert main(["run", "toy", "--quiet", "--threads", "1", "--set", "train.epochs=1",
                     "--out", str(tmp_path / "t")]) == 0
        assert torch.get_num_threads() == 1
        assert main(["run", "toy", "--threads", "0", "--out", str(tmp_path / "u")]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_parse_seeds() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("1,3,7") == [1, 3, 7]
    assert parse_seeds("2") == [2]
    for bad in ("4-1", "a", "1,1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_aggregate_ignores_none() -> None:
    agg = aggregate_summaries({0: {"a": 1.0, "b": None}, 1: {"a": 3.0, "b": 2}})
    assert agg["a.median"] == 2.0 and agg["b.n"] == 1


@pytest.mark.parametrize(("how", "ema"), [("interrupt", False), ("crash", False),
                                         ("interrupt", True)])
def test_resume_is_bit_exact(tmp_path: Path, how: str, ema: bool) -> None:
    # 3 epochs of 20 steps; stopped at step 37 (mid-epoch 2), then resumed.
    common = ["train.checkpoint_every=10", *(["train.ema_decay=0.9"] if ema else [])]
    full = run_experiment("toy", common, out=tmp_path / "full", progress=False)
    part = tmp_path / "part"
    stop = "interrupt_at=37" if how == "interrupt" else "crash_at=37"
    with pytest.raises(KeyboardInterrupt if how == "interrupt" else RuntimeError):
        run_experiment("toy", [*common, stop], out=part, progress=False)
    saved = load_checkpoint(part / "checkpoints" / "model" / "last.pt")["state"]["step"]
    assert saved == (37 if how == "interrupt" else 30)
    # the resumed run must use the same config; patch the stop key back out of config.json
    cfg = json.loads((part / "config.json").read_text())
    cfg["config"]["interrupt_at"] = cfg["config"]["crash_at"] = None
    (part / "config.json").write_text(json.dumps(cfg))
    run_experiment("toy", common, out=part, resume=True, progress=False)
    a, b = _params(full), _params(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert json.loads((full / "summary.json").read_text()) == json.loads(
        (part / "summary.json").read_text()
    )


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    run_experiment("toy", ["train.epochs=1"], out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="config differs"):
        run_experiment("toy", ["train.epochs=2"], out=tmp_path / "r", resume=True, progress=False)


def test_finished_run_resumes_without_training(tmp_path: Path) -> None:
    out = run_experiment("toy", ["train.epochs=1"], out=tmp_path / "r", progress=False)
    lines = (out / "metrics.jsonl").read_text()
    run_experiment("toy", ["train.epochs=1"], out=out, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == lines
