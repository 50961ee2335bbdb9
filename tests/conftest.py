"""Shared fixtures: sample data made from real photographs and a small trained model,
built once per session (tests must not depend on binary fixtures)."""
from __future__ import annotations

from pathlib import Path

import pytest

from stpm_edge.data.sample import make_sample_dataset
from stpm_edge.train.trainer import TrainConfig, train

# A small but real configuration: few epochs at a low resolution keep the suite fast on 2 cores.
# (3 epochs ranked the painted defects on one CPU and not on another: 6 is robust across machines.)
SMALL_TRAIN = dict(image_size=96, epochs=6, batch_size=8, time_budget_min=0, patience=10, seed=0)


@pytest.fixture(scope="session")
def brick_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "brick"
    make_sample_dataset(root, "brick", seed=0, image_size=128, n_train=16, n_test_good=6, n_defect_per_kind=2)
    return root


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory, brick_data: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "model.pt"
    train(brick_data, out, TrainConfig(**SMALL_TRAIN))
    return out
