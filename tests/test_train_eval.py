"""Training and evaluation on real computations (a small model on sample data)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_TRAIN
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.errors import StpmError
from stpm_edge.eval.evaluate import evaluate
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.train.trainer import TrainConfig, TrainInterrupted, split_holdout, train


def test_holdout_split_is_deterministic_and_disjoint():
    fit, hold = split_holdout(20, 0.2, seed=3)
    assert len(hold) == 4 and len(fit) == 16 and not set(fit) & set(hold)
    assert np.array_equal(split_holdout(20, 0.2, seed=3)[1], hold)
    assert not np.array_equal(split_holdout(20, 0.2, seed=4)[1], hold)
    with pytest.raises(StpmError, match="at least 3"):
        split_holdout(2, 0.2, 0)


def test_training_reduces_the_loss_and_the_model_scores_defects_higher(small_model: Path, brick_data: Path):
    model, meta = load_checkpoint(small_model)
    prov = meta.provenance
    assert prov["best_holdout_loss"] > 0 and prov["stop_reason"] == "epochs"
    result = evaluate(model, meta, load_dataset(brick_data))
    # a 3-epoch, 96 px model is far from converged, but it already ranks defects above good images
    assert result.image_auroc > 0.6
    assert result.pixel_auroc is not None and result.pixel_auroc > 0.7
    assert 0.0 <= result.pro <= 1.0 and result.f1 is not None and result.ms_per_image > 0


def test_student_learns_to_mimic_the_teacher(brick_data: Path, tmp_path: Path):
    out = tmp_path / "m.pt"
    res = train(brick_data, out, TrainConfig(**{**SMALL_TRAIN, "epochs": 4}))
    losses = [h.loss for h in res.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert res.history[-1].image_auroc is not None  # the test split is reported each epoch


def test_ctrl_c_keeps_the_last_good_checkpoint(brick_data: Path, tmp_path: Path):
    out = tmp_path / "m.pt"

    def interrupt(log, best):
        if log.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted) as err:  # a KeyboardInterrupt: the command exits 130
        train(brick_data, out, TrainConfig(**{**SMALL_TRAIN, "epochs": 50}), on_epoch=interrupt)
    res = err.value.result
    assert res.stop_reason == "interrupted" and res.epochs_run == 2
    model, meta = load_checkpoint(out)  # finalised: thresholds measured on the best epoch
    assert meta.normalization is not None and meta.provenance["stop_reason"] == "interrupted"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left


def test_interrupt_before_first_epoch_writes_nothing(brick_data: Path, tmp_path: Path):
    out = tmp_path / "m.pt"

    def interrupt(loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="nothing was saved"):
        train(brick_data, out, TrainConfig(**SMALL_TRAIN), on_step=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_early_stopping_and_time_budget(brick_data: Path, tmp_path: Path):
    res = train(brick_data, tmp_path / "a.pt", TrainConfig(**{**SMALL_TRAIN, "epochs": 50, "patience": 1, "lr": 1e-9}))
    assert res.stop_reason.startswith("early stop") and res.epochs_run < 5
    res = train(brick_data, tmp_path / "b.pt", TrainConfig(**{**SMALL_TRAIN, "epochs": 50, "time_budget_min": 1e-4}))
    assert res.stop_reason.startswith("time budget") and res.epochs_run == 1


def test_divergence_is_reported(brick_data: Path, tmp_path: Path):
    with pytest.raises(StpmError, match="diverged"):
        train(brick_data, tmp_path / "x.pt", TrainConfig(**{**SMALL_TRAIN, "lr": 1e12}))


def test_epochs_default_to_the_methods_own(brick_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from stpm_edge.models.registry import get_method

    assert get_method("cfa").default_epochs == 12 and get_method("stpm").default_epochs == 100
    monkeypatch.setattr(type(get_method("stpm")), "default_epochs", 2)
    res = train(brick_data, tmp_path / "d.pt", TrainConfig(**{**SMALL_TRAIN, "image_size": 64, "epochs": None}))
    assert res.epochs_run == 2 and res.stop_reason == "epochs"
    _, meta = load_checkpoint(tmp_path / "d.pt")
    assert meta.provenance["train_config"]["epochs"] == 2  # the schedule that ran, not None


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=600)


def test_cli_eval_json_and_info(small_model: Path, brick_data: Path):
    res = _cli("stpm-eval", str(small_model), str(brick_data), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["n_images"] == 14 and report["n_defective"] == 8
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert 0.0 <= report[key] <= 1.0
    res = _cli("stpm", "info", str(small_model), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["method"]["name"] == "stpm" and info["method"]["backbone"] == "efficientnet_lite0"
    assert info["config"]["backbone"] == "efficientnet_lite0" and len(info["sha256"]) == 64


def test_cli_train_end_to_end_and_one_line_errors(brick_data: Path, tmp_path: Path):
    out = tmp_path / "cli.pt"
    res = _cli("stpm-train", str(brick_data), "-o", str(out), "--image-size", "64", "--epochs", "1", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] == 1 and out.is_file()
    res = _cli("stpm-train", str(brick_data), "-o", str(tmp_path / "log.pt"), "--image-size", "64", "--epochs", "2",
               "--val-every", "0")  # into a pipe, as into a log file: one plain line per epoch, no progress bar
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert [ln.split(" loss ")[0] for ln in lines[:-1]] == ["stpm-train: epoch 1/2", "stpm-train: epoch 2/2"], lines
    assert lines[-1].startswith("saved ") and "thresholds: image" in lines[-1]  # the summary, on one line
    assert "━" not in res.stdout + res.stderr
    res = _cli("stpm-train", str(tmp_path / "missing"), "-o", str(tmp_path / "x.pt"))
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("stpm-train: ") and "no such dataset folder" in res.stderr
    assert not (tmp_path / "x.pt").exists()
    res = _cli("stpm-eval", str(tmp_path / "nope.pt"), str(brick_data))
    assert res.returncode == 1 and res.stderr.strip() == f"stpm-eval: {tmp_path / 'nope.pt'}: no such checkpoint file"
    res = _cli("stpm-train", str(brick_data), "--backbone", "vgg")
    assert res.returncode == 1 and "unknown backbone 'vgg'" in res.stderr


def test_cli_help_lists_the_verbs():
    res = _cli("stpm", "--help")
    assert res.returncode == 0
    for verb in ("train", "eval", "info", "data"):
        assert verb in res.stdout
    assert _cli("stpm-train", "--help").returncode == 0
    assert _cli("stpm", "--version").stdout.startswith("stpm-edge ")
