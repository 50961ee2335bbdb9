"""Tests for the offline sample dataset (stpm_edge.data.sample)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import stpm_edge.data.sample as sample
from stpm_edge.data.sample import (
    CATEGORIES,
    CHANGE_TOL,
    DEFECT_KINDS,
    SampleSummary,
    load_source,
    make_sample_dataset,
    paint_defect,
    split_column,
)
from stpm_edge.errors import StpmError

SMALL = dict(image_size=128, n_train=6, n_test_good=4, n_defect_per_kind=3)


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    assert img is not None, path
    return img


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dihedral(img: np.ndarray, op: int) -> np.ndarray:
    out = np.rot90(img, op % 4)
    return np.ascontiguousarray(out[:, ::-1] if op >= 4 else out)


def _locate(region: np.ndarray, img: np.ndarray, keep: np.ndarray | None = None):
    """Find ``img`` (up to a flip/90-degree rotation) as an exact crop of ``region``.

    Only pixels where ``keep`` is true must match. Returns (y, x, op) or None.
    """
    region = np.array(region)  # writable, contiguous copy (cv2 rejects read-only arrays)
    plane = region[:, :, 1].astype(np.float32)
    for op in range(8):
        cand = _dihedral(img, op)
        k = np.ones(cand.shape[:2], bool) if keep is None else _dihedral(keep, op)
        if cand.shape[0] > region.shape[0] or cand.shape[1] > region.shape[1]:
            continue
        score = cv2.matchTemplate(plane, cand[:, :, 1].astype(np.float32), cv2.TM_SQDIFF,
                                  mask=k.astype(np.float32))
        y, x = np.unravel_index(int(np.argmin(score)), score.shape)
        window = region[y:y + cand.shape[0], x:x + cand.shape[1]]
        if np.array_equal(window[k], cand[k]):
            return int(y), int(x), op
    return None


@pytest.fixture(scope="module")
def brick_ds(tmp_path_factory) -> tuple[SampleSummary, Path]:
    out = tmp_path_factory.mktemp("ds") / "brick"
    return make_sample_dataset(out, "brick", seed=3, **SMALL), out


def test_api_constants():
    assert CATEGORIES[0] == "brick"
    assert {"brick", "grass", "gravel"} <= set(CATEGORIES)
    assert DEFECT_KINDS[:4] == ("scratch", "spot", "crack", "patch")


@pytest.mark.parametrize("category", CATEGORIES)
def test_layout_counts_and_formats(tmp_path, category):
    out = tmp_path / "ds"
    s = make_sample_dataset(out, category, seed=1, **SMALL)
    assert s == SampleSummary(root=out, category=category, image_size=128, n_train=6, n_test_good=4,
                              n_test_defect={k: 3 for k in DEFECT_KINDS})
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth", "test", "train"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == sorted(DEFECT_KINDS)
    expected = {"train/good": 6, "test/good": 4, **{f"test/{k}": 3 for k in DEFECT_KINDS}}
    for sub, n in expected.items():
        names = sorted(p.name for p in (out / sub).iterdir())
        assert names == [f"{i:03d}.png" for i in range(n)], sub
        for name in names:
            img = _read(out / sub / name)
            assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    margin = 128 // 16
    for kind in DEFECT_KINDS:
        masks = sorted(p.name for p in (out / "ground_truth" / kind).iterdir())
        assert masks == [f"{i:03d}_mask.png" for i in range(3)]
        for name in masks:
            m = _read(out / "ground_truth" / kind / name)
            assert m.dtype == np.uint8 and m.shape == (128, 128)
            assert set(np.unique(m).tolist()) == {0, 255}
            assert 0.003 <= (m > 0).mean() <= 0.06
            ys, xs = np.nonzero(m)
            assert ys.min() >= margin and xs.min() >= margin
            assert ys.max() < 128 - margin and xs.max() < 128 - margin


def test_default_sizes(tmp_path):
    s = make_sample_dataset(tmp_path / "d")
    assert (s.category, s.image_size, s.n_train, s.n_test_good) == ("brick", 256, 60, 20)
    assert s.n_test_defect == {k: 6 for k in DEFECT_KINDS}
    assert len(list((tmp_path / "d" / "train" / "good").glob("*.png"))) == 60
    assert _read(tmp_path / "d" / "test" / "crack" / "005.png").shape == (256, 256, 3)


def test_deterministic_and_seed_dependent(tmp_path, brick_ds):
    _, ref = brick_ds
    again = tmp_path / "again"
    make_sample_dataset(again, "brick", seed=3, **SMALL)
    assert _files(again) == _files(ref)
    other = tmp_path / "other"
    make_sample_dataset(other, "brick", seed=4, **SMALL)
    a, b = _files(ref), _files(other)
    assert a.keys() == b.keys()
    for split in ("train/good", "test/good", "test/scratch", "ground_truth/spot"):
        assert all(a[k] != b[k] for k in a if k.startswith(split + "/")), split


def test_test_set_independent_of_n_train(tmp_path, brick_ds):
    _, ref = brick_ds
    more = tmp_path / "more"
    make_sample_dataset(more, "brick", seed=3, **{**SMALL, "n_train": 9})
    a, b = _files(ref), _files(more)
    assert {k: v for k, v in a.items() if not k.startswith("train")} == \
        {k: v for k, v in b.items() if not k.startswith("train")}


def test_train_and_test_come_from_disjoint_regions(brick_ds):
    s, root = brick_ds
    src = load_source("brick")
    b = split_column(src.shape[1], s.image_size)
    assert 0 < b - s.image_size and b + s.image_size <= src.shape[1]
    train_region, test_region = src[:, :b], src[:, b:]
    for p in sorted((root / "train" / "good").iterdir()):
        img = _read(p)
        assert _locate(train_region, img) is not None, p
        assert _locate(test_region, img) is None, p
    for p in sorted((root / "test" / "good").iterdir()):
        img = _read(p)
        assert _locate(test_region, img) is not None, p
        assert _locate(train_region, img) is None, p


def test_defects_change_only_masked_pixels(brick_ds):
    s, root = brick_ds
    src = load_source("brick")
    test_region = src[:, split_column(src.shape[1], s.image_size):]
    for kind in DEFECT_KINDS:
        for i in range(s.n_test_defect[kind]):
            img = _read(root / "test" / kind / f"{i:03d}.png")
            mask = _read(root / "ground_truth" / kind / f"{i:03d}_mask.png") > 0
            # Outside the mask the image is an exact crop of the test region...
            found = _locate(test_region, img, keep=~mask)
            assert found is not None, (kind, i)
            y, x, op = found
            window = np.asarray(test_region[y:y + s.image_size, x:x + s.image_size])
            cand, cmask = _dihedral(img, op), _dihedral(mask, op)
            assert np.array_equal(cand[~cmask], window[~cmask])
            # ...and inside it the pixels differ from that crop.
            diff = np.abs(cand.astype(int) - window.astype(int)).max(axis=2)
            if kind == "patch":
                assert diff[cmask].mean() > 10 and (diff[cmask] >= CHANGE_TOL).mean() > 0.5
            else:
                assert diff[cmask].min() >= CHANGE_TOL


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_paint_defect_properties(kind):
    src = load_source("gravel")
    rng = np.random.default_rng(7)
    for size in (64, 160, 256):
        margin = max(4, size // 16)
        for _ in range(12):
            y, x = rng.integers(0, src.shape[0] - size, 2)
            clean = np.array(src[y:y + size, x:x + size])
            before = clean.copy()
            bad, mask = paint_defect(clean, kind, rng, donor=src[:, :200])
            assert np.array_equal(clean, before)  # input untouched
            assert bad.shape == clean.shape and bad.dtype == np.uint8 and mask.dtype == bool
            assert 0.003 <= mask.mean() <= 0.06
            ys, xs = np.nonzero(mask)
            assert ys.min() >= margin and xs.min() >= margin
            assert ys.max() < size - margin and xs.max() < size - margin
            assert np.array_equal(bad[~mask], clean[~mask])
            diff = np.abs(bad.astype(int) - clean.astype(int)).max(axis=2)
            if kind == "patch":  # the mask is the pasted rectangle
                assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
                assert diff[mask].mean() > 10
            else:  # the mask is exactly the pixels changed by >= CHANGE_TOL
                assert np.array_equal(mask, diff >= CHANGE_TOL)


def test_unknown_category(tmp_path):
    with pytest.raises(StpmError) as exc:
        make_sample_dataset(tmp_path / "x", "carpet")
    msg = str(exc.value)
    assert "carpet" in msg and "\n" not in msg and all(c in msg for c in CATEGORIES)
    assert not (tmp_path / "x").exists()
    with pytest.raises(StpmError):
        paint_defect(np.zeros((64, 64, 3), np.uint8), "smudge", np.random.default_rng(0))


@pytest.mark.parametrize("kwargs", [
    dict(image_size=63), dict(image_size=257), dict(image_size=160.0), dict(n_train=0),
    dict(n_test_good=-1), dict(n_defect_per_kind=0), dict(n_train=True), dict(seed=-1), dict(seed="0"),
])
def test_invalid_numbers(tmp_path, kwargs):
    with pytest.raises(StpmError) as exc:
        make_sample_dataset(tmp_path / "x", "brick", **kwargs)
    assert "\n" not in str(exc.value) and next(iter(kwargs)) in str(exc.value)
    assert not (tmp_path / "x").exists()


def test_existing_directory(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()  # an empty directory is fine
    make_sample_dataset(out, "grass", seed=0, **SMALL)
    before = _files(out)
    with pytest.raises(StpmError, match=r"already exists and is not empty \(use --overwrite\)"):
        make_sample_dataset(out, "grass", seed=1, **SMALL)
    assert _files(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(StpmError):
        make_sample_dataset(tmp_path / "file", **SMALL)


def test_overwrite_replaces_dataset(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    s = make_sample_dataset(out, "gravel", seed=5, overwrite=True, **SMALL)
    assert s.root == out and not (out / "stale.txt").exists()
    fresh = tmp_path / "fresh"
    make_sample_dataset(fresh, "gravel", seed=5, **SMALL)
    assert _files(out) == _files(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "fresh"]  # no temp dirs left


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real_write = sample.write_image
    calls = {"n": 0}

    def flaky(path, image):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        real_write(path, image)

    monkeypatch.setattr(sample, "write_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_sample_dataset(tmp_path / "new", **SMALL)
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("keep")
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        make_sample_dataset(old, overwrite=True, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (old / "keep.txt").read_text() == "keep" and len(list(old.iterdir())) == 1
