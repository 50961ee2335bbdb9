from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stpm_edge.data.io import atomic_path, read_image_bgr, write_image
from stpm_edge.data.mvtec import load_dataset, load_test_sample
from stpm_edge.errors import StpmError


def _img(path: Path, h: int = 32, w: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((h, w, 3), 128, np.uint8))


def test_mvtec_layout(brick_data: Path):
    ds = load_dataset(brick_data)
    assert len(ds.train) == 16 and ds.has_test and ds.has_masks
    defective = [s for s in ds.test if s.label]
    assert defective and all(s.mask is not None and s.mask.is_file() for s in defective)
    img, mask = load_test_sample(defective[0])
    assert img.shape[2] == 3 and mask.shape == img.shape[:2] and mask.any()


def test_plain_folder_is_train_only(tmp_path: Path):
    for i in range(3):
        _img(tmp_path / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert len(ds.train) == 3 and not ds.test and not ds.has_test


def test_layout_errors_name_the_file(tmp_path: Path):
    with pytest.raises(StpmError, match="no such dataset folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StpmError, match="neither an MVTec AD category"):
        load_dataset(tmp_path / "empty")
    root = tmp_path / "cat"
    _img(root / "train/good/000.png")
    _img(root / "test/good/000.png")
    _img(root / "test/scratch/000.png")
    (root / "ground_truth/scratch").mkdir(parents=True)
    with pytest.raises(StpmError, match=r"test/scratch/000.png: no ground-truth mask \(expected .*000_mask.png\)"):
        load_dataset(root)
    _img(root / "ground_truth/scratch/000_mask.png", 16, 16)
    ds = load_dataset(root)
    with pytest.raises(StpmError, match="mask is 16x16, image is 32x32"):
        load_test_sample(next(s for s in ds.test if s.label))


def test_unreadable_image_is_a_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(StpmError, match="not a readable image"):
        read_image_bgr(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(StpmError, match="not a readable image"):
        read_image_bgr(empty)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path):
    dest = tmp_path / "out.bin"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert dest.read_text() == "old" and list(tmp_path.iterdir()) == [dest]
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new" and list(tmp_path.iterdir()) == [dest]
