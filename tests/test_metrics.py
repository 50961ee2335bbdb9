"""Tests for stpm_edge.eval.metrics (scikit-learn is used only as a reference here)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stpm_edge.eval.metrics import (
    Metrics,
    best_f1,
    compute_metrics,
    f1_at_threshold,
    image_auroc,
    pixel_auroc,
    pro_auc,
    roc_auc,
    roc_curve,
)

sk_metrics = pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------- ROC
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("pos_rate", [0.5, 0.05])
def test_roc_auc_matches_sklearn(seed: int, decimals: int | None, pos_rate: float) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    y = rng.random(n) < pos_rate
    y[:2] = [True, False]  # both classes present
    s = rng.normal(size=n) + 0.7 * y
    if decimals is not None:  # heavy ties
        s = np.round(s, decimals)
    assert roc_auc(y, s) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)
    assert image_auroc(y.astype(int), s.tolist()) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_trivial_cases() -> None:
    y = [0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([True, False], [3.0, 3.0]) == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 2)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_pixel_auroc_matches_flattened_sklearn() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 64, 64), dtype=bool)
    masks[1:4, 20:35, 10:30] = True
    maps = ndimage.gaussian_filter(rng.random(masks.shape), (0, 2, 2)) + 0.05 * masks
    expected = sk_metrics.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(
        sk_metrics.roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()), abs=1e-12)


# --------------------------------------------------------------------------- PRO
def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    # Image A: region R1 = 2x2 block (4 px).  Image B: region R2 = horizontal pair (2 px).
    masks = np.array([
        [[1, 1, 0, 0],
         [1, 1, 0, 0]],
        [[0, 0, 0, 0],
         [0, 0, 1, 1]],
    ], dtype=bool)
    maps = np.array([
        [[0.9, 0.9, 0.3, 0.1],
         [0.5, 0.5, 0.1, 0.1]],
        [[0.1, 0.7, 0.1, 0.1],
         [0.1, 0.1, 0.5, 0.3]],
    ])
    return masks, maps


def test_pro_hand_computed() -> None:
    masks, maps = _hand_case()
    # 10 normal pixels: one at 0.7, one at 0.3, eight at 0.1.  R1 = {.9,.9,.5,.5}, R2 = {.5,.3}.
    # t=0.9: R1 2/4, R2 0/2 -> PRO 0.25 ; FPR 0/10 = 0.0
    # t=0.7: PRO 0.25                   ; FPR 1/10 = 0.1
    # t=0.5: R1 4/4, R2 1/2 -> PRO 0.75 ; FPR 0.1
    # t=0.3: R2 2/2         -> PRO 1.0  ; FPR 2/10 = 0.2   (slanted segment 0.1->0.2)
    # t=0.1:                   PRO 1.0  ; FPR 1.0
    # Curve: (0,0) (0,.25) (.1,.25) (.1,.75) (.2,1) (1,1)
    # Limit 0.15 (between FPR points): PRO(0.15) = 0.75 + 0.5 * 0.25 = 0.875
    #   area = 0.1*0.25 + 0.05*(0.75+0.875)/2 = 0.025 + 0.040625 = 0.065625 ; /0.15 = 0.4375
    assert pro_auc(masks, maps, fpr_limit=0.15) == pytest.approx(0.4375, abs=1e-12)
    # Limit 0.3: 0.025 + 0.1*(0.75+1)/2 + 0.1*1 = 0.2125 ; /0.3 = 0.708333...
    assert pro_auc(masks, maps) == pytest.approx(0.2125 / 0.3, abs=1e-12)
    # Limit exactly on a FPR point (0.1): area 0.025 ; /0.1 = 0.25
    assert pro_auc(masks, maps, fpr_limit=0.1) == pytest.approx(0.25, abs=1e-12)
    # Limit 1: 0.025 + 0.0875 + 0.8 = 0.9125
    assert pro_auc(masks, maps, fpr_limit=1.0) == pytest.approx(0.9125, abs=1e-12)
    # Regions here are 4-connected blocks, so both connectivities agree.
    assert pro_auc(masks, maps, connectivity=4) == pytest.approx(0.2125 / 0.3, abs=1e-12)


def test_pro_perfect_and_constant_maps() -> None:
    masks, _ = _hand_case()
    assert pro_auc(masks, masks.astype(float)) == pytest.approx(1.0)
    assert pro_auc(masks, masks * 5.0 + 1.0, fpr_limit=0.05) == pytest.approx(1.0)
    # Constant map: a single threshold, curve (0,0) -> (1,1); area to L is L^2/2 -> L/2.
    assert pro_auc(masks, np.full(masks.shape, 0.3)) == pytest.approx(0.15)
    assert pro_auc(masks, np.zeros(masks.shape), fpr_limit=0.2) == pytest.approx(0.1)
    # Inverted map: all defect pixels last -> PRO is 0 until FPR 1.
    assert pro_auc(masks, 1.0 - masks) == pytest.approx(0.0)


def test_pro_connectivity_diagonal() -> None:
    # A diagonal chain of 3 px plus an isolated pixel; 16 - 4 = 12 normal pixels.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 2] = True
    masks[0, 0, 3] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0  # only the chain's first pixel detected at t=1
    maps[0, 3, 3] = 0.5  # one normal pixel: FPR(0.5) = 1/12
    # Curve (0,0) (0,p) (1/12,p) (1,1); integrating to 1/12 and normalising gives p = PRO(t=1).
    # 8-connectivity (default, official script): regions {chain(3), iso(1)} -> p = (1/3 + 0)/2
    assert pro_auc(masks, maps, fpr_limit=1 / 12) == pytest.approx(1 / 6)
    # 4-connectivity: four 1-px regions -> p = (1 + 0 + 0 + 0)/4
    assert pro_auc(masks, maps, fpr_limit=1 / 12, connectivity=4) == pytest.approx(1 / 4)


def test_pro_components_are_per_image() -> None:
    # Image 0 has a defect on its bottom row, image 1 on its top row, in the same column:
    # stacked along axis 0 they touch, but must stay two regions (sizes 1 and 3).
    masks = np.array([
        [[0, 0, 0],
         [1, 0, 0]],
        [[1, 1, 1],
         [0, 0, 0]],
    ], dtype=bool)
    maps = np.zeros(masks.shape)
    maps[0, 1, 0] = 1.0        # region of image 0 fully detected first
    maps[1, 0, :] = 0.5        # region of image 1 later
    maps[0, 0, 2] = 0.8        # one of 8 normal pixels in between
    # t=1: PRO (1 + 0)/2 = .5, FPR 0 ; t=.8: FPR 1/8 ; t=.5: PRO 1 ; t=0: FPR 1.
    # area to 0.3 = 0.5*0.125 + 1*(0.3 - 0.125) = 0.2375 ; /0.3 = 0.791666...
    # (a merged 4-px region would give PRO(1) = 0.25 -> 0.20625/0.3 = 0.6875)
    assert pro_auc(masks, maps) == pytest.approx(0.2375 / 0.3)


def _bruteforce_pro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Naive loop over thresholds with full-image comparisons (8-connectivity)."""
    regions, imgs = [], []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [lab == k for k in range(1, n + 1)]
        imgs += [i] * n
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(np.sum(pred & ~masks) / np.sum(~masks))
        pros.append(np.mean([np.sum(pred[i] & r) / np.sum(r) for i, r in zip(imgs, regions)]))
    x, y = np.array(fprs), np.array(pros)
    xs = np.linspace(0.0, limit, 20001)  # dense sampling of the piecewise-linear curve
    # np.interp needs increasing x; vertical segments collapse, keep the last (highest) value.
    keep = np.append(np.diff(x) > 0, True)
    ys = np.interp(xs, x[keep], y[keep])
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / limit)


@pytest.mark.parametrize("seed", range(3))
def test_pro_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.random((3, 24, 24)), (0, 2, 2)) > 0.53
    masks[0] = False  # a defect-free image counts for the FPR
    maps = np.round(ndimage.gaussian_filter(rng.random(masks.shape), (0, 1, 1)) + 0.1 * masks, 2)
    expected = _bruteforce_pro(masks, maps, 0.3)
    assert pro_auc(masks, maps) == pytest.approx(expected, abs=1e-4)


def _smooth_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.random((8, 64, 64)), (0, 4, 4)) > 0.52
    maps = ndimage.gaussian_filter(rng.random(masks.shape), (0, 2, 2)) + 0.03 * masks
    return masks, maps


def test_pro_binned_close_to_exact() -> None:
    masks, maps = _smooth_case(0)
    exact = pro_auc(masks, maps)
    assert 0.0 < exact < 1.0
    assert pro_auc(masks, maps, num_thresholds=5000) == pytest.approx(exact, abs=2e-3)
    coarse = pro_auc(masks, maps, num_thresholds=10)
    assert 0.0 <= coarse <= 1.0


def test_pro_invariant_to_monotone_transform() -> None:
    masks, maps = _smooth_case(1)
    exact = pro_auc(masks, maps)
    assert pro_auc(masks, np.exp(3.0 * maps) - 7.0) == pytest.approx(exact, abs=1e-12)
    assert pro_auc(masks, maps ** 3) == pytest.approx(exact, abs=1e-12)


# --------------------------------------------------------------------------- F1
def test_f1_at_threshold_hand_case() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.6, 0.3, 0.1, 0.0]
    # >= 0.6 -> predicted {0.9, 0.6(pos), 0.6(neg)}: tp 2, fp 1, fn 1, tn 3
    r = f1_at_threshold(y, s, 0.6)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 3)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    # threshold above every score: nothing predicted -> zero-division values are 0.0
    r = f1_at_threshold(y, s, 1.0)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (0, 0, 3, 4)
    assert r["precision"] == r["recall"] == r["f1"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_best_f1_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)
    brute = [(f1_at_threshold(y, s, t)["f1"], t) for t in np.unique(s)]
    best = max(f for f, _ in brute)
    f1, thr = best_f1(y, s)
    assert f1 == pytest.approx(best)
    assert f1_at_threshold(y, s, thr)["f1"] == pytest.approx(best)
    assert thr == max(t for f, t in brute if f == pytest.approx(best))


# --------------------------------------------------------------------------- report
def test_compute_metrics() -> None:
    m = compute_metrics([True, False, True], [0.9, 0.2, 0.7], threshold=0.5)
    assert isinstance(m, Metrics)
    assert m.image_auroc == 1.0 and m.pixel_auroc is None and m.pro is None
    assert m.f1 is not None and m.f1["f1"] == 1.0
    hand_masks, hand_maps = _hand_case()
    masks = np.concatenate([hand_masks, np.zeros((1, 2, 4), bool)])   # + a defect-free image
    maps = np.concatenate([hand_maps, np.full((1, 2, 4), 0.2)])
    labels = masks.reshape(3, -1).any(axis=1)
    scores = maps.reshape(3, -1).max(axis=1)
    m = compute_metrics(labels, scores, masks, maps)
    assert m.image_auroc == 1.0 and m.f1 is None
    assert m.pro == pytest.approx(pro_auc(masks, maps))
    assert m.pixel_auroc == pytest.approx(sk_metrics.roc_auc_score(masks.ravel(), maps.ravel()))
    m = compute_metrics(labels, scores, np.zeros_like(masks), maps)  # no defective pixel
    assert m.pixel_auroc is None and m.pro is None


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call",
    [
        lambda: roc_auc([1, 1, 1], [0.1, 0.2, 0.3]),                  # one class
        lambda: roc_auc([0, 0], [0.1, 0.2]),
        lambda: roc_auc([0, 1, 1], [0.1, 0.2]),                       # length mismatch
        lambda: roc_auc([0, 2], [0.1, 0.2]),                          # not binary
        lambda: roc_auc([[0, 1]], [[0.1, 0.2]]),                      # not 1-D
        lambda: roc_auc([], []),                                      # empty
        lambda: roc_auc([0, 1], [0.1, np.nan]),                       # NaN
        lambda: roc_curve([0, 1], ["a", "b"]),                        # not numeric
        lambda: pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))),
        lambda: pro_auc(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)),  # no defects
        lambda: pro_auc(np.ones((2, 4, 4), bool), np.random.rand(2, 4, 4)),   # no normals
        lambda: pro_auc(np.eye(4, dtype=bool), np.random.rand(4, 4)),          # not (N,H,W)
        lambda: pro_auc(*_hand_case(), fpr_limit=0.0),
        lambda: pro_auc(*_hand_case(), fpr_limit=1.5),
        lambda: pro_auc(*_hand_case(), num_thresholds=1),
        lambda: pro_auc(*_hand_case(), connectivity=6),
        lambda: pro_auc(_hand_case()[0] * 255, _hand_case()[1]),     # 0/255 masks
        lambda: f1_at_threshold([0, 1], [0.1, 0.2], float("nan")),
        lambda: best_f1([0, 1], [0.1]),
        lambda: compute_metrics([0, 1], [0.1, 0.2], masks=np.zeros((2, 2, 2))),
    ],
)
def test_value_errors(call) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert "\n" not in str(info.value)


def test_module_does_not_import_sklearn() -> None:
    import ast
    import inspect

    import stpm_edge.eval.metrics as mod

    tree = ast.parse(inspect.getsource(mod))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("sklearn") for name in names)
