"""Tests of jad.metrics against scikit-learn, scikit-image and plain PRO references.

References, none of them the code under test:

- AUROC, AP, ROC and PR curves, the F1-optimal threshold: scikit-learn.
- PRO: (1) the MVTec AD reference algorithm evaluated at every normal score (its
  binned thresholds become exact when every normal score is a threshold), (2) the
  anomalib >= 2.3 exact algorithm written as a global sort + cumsum, and (3) a brute
  force over every distinct score with scikit-image's connected components.
- IoU and DICE: scikit-learn's ``jaccard_score`` and ``f1_score``.
"""

from __future__ import annotations

import doctest
import importlib
from bisect import bisect

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label
from sklearn import metrics as skm

from jad import metrics
from jad.metrics import _common, regions

# float64 sums of up to a few thousand terms in a different order than the reference.
_TOL = 1e-12


# ------------------------------------------------------------------ data helpers


def _scores_labels(rng, n, *, positives=0.2, levels=None, dtype=np.float64):
    """Random scores (quantised to ``levels`` values to force ties) and labels."""
    labels = rng.random(n) < positives
    scores = rng.random(n) + 0.6 * labels
    if levels is not None:
        scores = np.round(scores * levels) / levels
    return scores.astype(dtype), labels


def _blob_masks(rng, num, size, *, empty_every=3):
    """(num, size, size) masks with a few discs and squares; every ``empty_every``-th
    image is anomaly-free."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((num, size, size), bool)
    for i in range(num):
        if i % empty_every == 0:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.uniform(0.5, size / 5)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return masks


def _maps(rng, masks, *, levels=None, dtype=np.float64):
    maps = rng.random(masks.shape) + 0.7 * masks * rng.random(masks.shape)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype)


# ------------------------------------------------------------- PRO references


def _mvtec_trapezoid(x, y, x_max):
    """MVTec AD reference integration: trapezoid up to x_max, linear interpolation
    of y at x_max on the segment that crosses it."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    correction = 0.0
    if x_max not in x:
        ins = bisect(list(x), x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (
            x[ins] - x[ins - 1]
        )
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _mvtec_reference_pro(maps, masks, max_fpr, thresholds="normal-100"):
    """The MVTec AD reference algorithm: 8-connected components per image, points
    (FPR, PRO) of ``maps > t`` for each threshold t (PRO = mean over all components
    of the fraction of pixels > t), (1, 1) added, trapezoid up to max_fpr / max_fpr.

    ``thresholds``: "normal-<n>" = the reference's default, n scores at linspace
    positions of the sorted normal scores; "normal" = every normal score; "all" =
    every distinct score of the set (then the points are the exact curve's)."""
    components, ok = [], []
    for amap, gt in zip(maps, masks, strict=True):
        labelled, n = ndimage.label(gt, np.ones((3, 3), int))
        ok.append(amap[labelled == 0])
        components += [np.sort(amap[labelled == k]) for k in range(1, n + 1)]
    ok = np.sort(np.concatenate(ok))
    if thresholds == "all":
        thresholds = np.unique(maps)
    elif thresholds == "normal":
        thresholds = ok
    else:
        num = int(thresholds.split("-")[1])
        thresholds = ok[np.linspace(0, ok.size - 1, num=num, dtype=int)]
    fprs, pros = [1.0], [1.0]
    for t in thresholds:
        fprs.append(1.0 - np.searchsorted(ok, t, "right") / ok.size)
        above = [1 - np.searchsorted(c, t, "right") / c.size for c in components]
        pros.append(np.mean(above))
    return _mvtec_trapezoid(fprs[::-1], pros[::-1], max_fpr) / max_fpr


def _anomalib_exact_pro(maps, masks, max_fpr):
    """anomalib >= 2.3's exact algorithm: one global descending sort, FPR =
    cumsum(normal) / n_normal, PRO = cumsum(1 / region size) / n_regions, last point
    of each tie group, (0, 0) prepended, clip at max_fpr, / max_fpr."""
    labels = np.zeros(masks.shape, int)
    offset = 0
    for i, gt in enumerate(masks):
        lab, n = ndimage.label(gt, np.ones((3, 3), int))
        labels[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    scores, labels = maps.ravel(), labels.ravel()
    sizes = np.bincount(labels)
    normal = labels == 0
    weight = np.where(normal, 0.0, 1.0 / sizes[labels])
    order = np.argsort(-scores, kind="stable")
    fpr = np.cumsum(normal[order]) / normal.sum()
    pro = np.cumsum(weight[order]) / offset
    s = scores[order]
    last = np.append(s[1:] != s[:-1], True)
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    return _mvtec_trapezoid(fpr, pro, max_fpr) / max_fpr


def _brute_force_curve(maps, masks):
    """(FPR, PRO) of ``maps >= t`` for every distinct score t, scikit-image labels."""
    regions_ = []
    for i, gt in enumerate(masks):
        lab = sk_label(gt, connectivity=2)
        regions_ += [(i, lab == k) for k in range(1, lab.max() + 1)]
    normal = ~masks.astype(bool)
    points = {}
    for t in np.unique(maps):
        detected = maps >= t
        fpr = np.sum(detected & normal) / normal.sum()
        pro = np.mean([detected[i][r].mean() for i, r in regions_])
        points[float(t)] = (fpr, pro)
    return points


# ------------------------------------------------------------ ranking metrics


@pytest.mark.parametrize("levels", [None, 7, 50])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auroc_and_ap_match_sklearn_with_ties(levels, dtype):
    rng = np.random.default_rng(levels or 1)
    scores, labels = _scores_labels(rng, 3000, levels=levels, dtype=dtype)
    assert metrics.auroc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=_TOL
    )
    assert metrics.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=_TOL
    )


@pytest.mark.parametrize("levels", [None, 5])
def test_curves_match_sklearn(levels):
    rng = np.random.default_rng(2)
    scores, labels = _scores_labels(rng, 500, levels=levels)
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    curve = metrics.roc_curve(scores, labels)
    np.testing.assert_allclose(curve.fpr, fpr, atol=_TOL)
    np.testing.assert_allclose(curve.tpr, tpr, atol=_TOL)
    np.testing.assert_array_equal(curve.thresholds, thr)
    precision, recall, thr = skm.precision_recall_curve(labels, scores)
    curve = metrics.precision_recall_curve(scores, labels)
    np.testing.assert_allclose(curve.precision, precision, atol=_TOL)
    np.testing.assert_allclose(curve.recall, recall, atol=_TOL)
    np.testing.assert_array_equal(curve.thresholds, thr)


def _padim_threshold(scores, labels):
    """PaDiM's official rule: argmax of F1 over sklearn's precision-recall curve."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    a, b = 2 * precision * recall, precision + recall
    f1 = np.divide(a, b, out=np.zeros_like(a), where=b != 0)
    return thresholds[np.argmax(f1)], f1.max()


@pytest.mark.parametrize("levels", [None, 4, 30])
def test_f1_optimal_threshold_matches_sklearn_curve(levels):
    rng = np.random.default_rng(3)
    scores, labels = _scores_labels(rng, 2000, positives=0.05, levels=levels)
    threshold, f1 = metrics.f1_optimal_threshold(scores, labels)
    ref_threshold, ref_f1 = _padim_threshold(scores, labels)
    assert threshold == ref_threshold
    assert f1 == pytest.approx(ref_f1, abs=_TOL)
    assert f1 == pytest.approx(skm.f1_score(labels, scores >= threshold), abs=_TOL)


def test_f1_optimal_threshold_ties_pick_the_lowest_threshold():
    # F1 = 2/3 at threshold 0.9 (tp 1, fp 0) and at 0.5 (tp 2, fp 2): argmax over
    # scikit-learn's increasing thresholds returns 0.5.
    scores = np.array([0.9, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 0, 1])
    result = metrics.f1_optimal_threshold(scores, labels)
    assert result == (0.5, pytest.approx(2 / 3))
    assert result.threshold == _padim_threshold(scores, labels)[0]


def test_ranking_edge_cases():
    # all tied: AUROC 1/2, AP = prevalence
    labels = np.array([0, 1, 0, 0, 1])
    tied = np.full(5, 0.3)
    assert metrics.auroc(tied, labels) == 0.5
    assert metrics.average_precision(tied, labels) == pytest.approx(0.4)
    # perfect and reversed separation, a single positive
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.8])
    assert metrics.auroc(scores, labels) == 1.0
    assert metrics.auroc(-scores, labels) == 0.0
    assert metrics.average_precision(scores, labels) == 1.0
    one = np.array([0, 0, 1, 0, 0])
    assert metrics.auroc(scores, one) == pytest.approx(skm.roc_auc_score(one, scores))
    # no negatives: AP is 1, AUROC undefined
    assert metrics.average_precision(scores, np.ones(5, bool)) == 1.0
    with pytest.raises(ValueError, match="no negative"):
        metrics.auroc(scores, np.ones(5, bool))
    for fn in (metrics.auroc, metrics.average_precision, metrics.f1_optimal_threshold):
        with pytest.raises(ValueError, match="no positive"):
            fn(scores, np.zeros(5, bool))


def test_negative_zero_ties_with_zero():
    scores = np.array([0.0, -0.0, 0.0, -0.0, 1.0], np.float32)
    labels = np.array([1, 0, 0, 1, 1])
    assert metrics.auroc(scores, labels) == skm.roc_auc_score(labels, scores)
    assert metrics.roc_curve(scores, labels).thresholds.size == 3


def test_any_shape_jax_and_half_precision_inputs():
    rng = np.random.default_rng(4)
    scores, labels = _scores_labels(rng, 600, levels=40, dtype=np.float32)
    expected = skm.roc_auc_score(labels, scores)
    assert metrics.auroc(scores.reshape(6, 10, 10), labels.reshape(6, 10, 10)) == (
        pytest.approx(expected, abs=_TOL)
    )
    assert metrics.auroc(jnp.asarray(scores), jnp.asarray(labels)) == pytest.approx(
        expected, abs=_TOL
    )
    assert metrics.auroc(scores, labels.astype(np.uint8)) == pytest.approx(expected)
    assert metrics.auroc(list(scores), list(labels.astype(int))) == pytest.approx(
        expected, abs=_TOL
    )
    # levels / 40 are exact in float16 and bfloat16: widening keeps the ties
    for dtype in (jnp.float16, jnp.bfloat16):
        half = jnp.asarray(np.round(scores * 8) / 8, dtype)
        ref = skm.roc_auc_score(labels, np.asarray(half, np.float32))
        assert metrics.auroc(half, labels) == pytest.approx(ref, abs=_TOL)


def test_image_level_auroc_from_image_scores():
    image_scores = np.array([0.2, 0.9, 0.4, 0.8, 0.1])
    image_labels = np.array([False, True, False, True, True])
    assert metrics.auroc(image_scores, image_labels) == pytest.approx(
        skm.roc_auc_score(image_labels, image_scores)
    )


@pytest.mark.parametrize("levels", [None, 7])
def test_several_sorted_runs_give_scikit_learn_values(monkeypatch, levels):
    # One chunk per core: with tiny chunks every core-count path (threads, runs of
    # unequal length, ties across runs) is exercised; the values must not move.
    monkeypatch.setattr(_common, "_MIN_CHUNK", 16)
    monkeypatch.setattr(_common, "_num_workers", lambda: 3)
    rng = np.random.default_rng(21)
    scores, labels = _scores_labels(rng, 301, levels=levels, dtype=np.float32)
    assert metrics.auroc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=_TOL
    )
    assert metrics.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=_TOL
    )
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    curve = metrics.roc_curve(scores, labels)
    np.testing.assert_allclose(curve.fpr, fpr, atol=_TOL)
    np.testing.assert_allclose(curve.tpr, tpr, atol=_TOL)
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    pr = metrics.precision_recall_curve(scores, labels)
    np.testing.assert_allclose(pr.precision, precision, atol=_TOL)
    np.testing.assert_allclose(pr.recall, recall, atol=_TOL)
    np.testing.assert_array_equal(pr.thresholds, thresholds)


def test_thread_limit_from_the_environment(monkeypatch):
    monkeypatch.setattr(_common, "_MIN_CHUNK", 16)
    cores = _common._num_workers()
    seen = []
    for limit, expected in (("1", 1), ("2", min(2, cores)), ("999", cores)):
        monkeypatch.setenv("JAD_METRICS_THREADS", limit)
        assert _common._num_workers() == expected
        seen.append(len(_common.map_chunks(lambda chunk: chunk, 1000)))
    assert seen == [1, min(2, cores), cores]
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("JAD_METRICS_THREADS", bad)
        with pytest.raises(ValueError, match="JAD_METRICS_THREADS"):
            metrics.auroc(np.arange(3.0), [0, 1, 1])


def test_sorted_runs_count_and_select_like_one_sorted_array():
    rng = np.random.default_rng(22)
    values = np.round(rng.standard_normal(500), 1).astype(np.float32)  # many ties
    cuts = [0, 17, 17, 240, 500]  # includes an empty run
    runs = _common.SortedRuns(
        tuple(np.sort(values[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=False))
    )
    whole = np.sort(values)
    queries = np.concatenate([np.unique(values), [-9.0, 0.05, 9.0]]).astype(np.float32)
    below, below_or_tied = runs.counts_below(queries)
    np.testing.assert_array_equal(below, np.searchsorted(whole, queries, "left"))
    np.testing.assert_array_equal(
        below_or_tied, np.searchsorted(whole, queries, "right")
    )
    np.testing.assert_array_equal(runs.count_below(queries), below)
    for k in (1, 2, 17, 250, 499, 500):
        assert runs.kth_largest(k) == whole[whole.size - k]
    np.testing.assert_array_equal(runs.distinct(), np.unique(values))
    with pytest.raises(ValueError, match="k must be"):
        runs.kth_largest(501)


def test_packed_descending_sort_matches_argsort():
    rng = np.random.default_rng(23)
    scores = np.concatenate(
        [rng.standard_normal(300), [0.0, -0.0, -0.0, 0.0, 1e-45, -1e-45, 3e38, -3e38]]
    ).astype(np.float32)
    scores[::7] = scores[3]  # ties
    ids = rng.integers(1, 2**31, scores.size)
    got_scores, got_ids = regions._descending(scores, ids)
    assert got_scores.dtype == np.float32
    np.testing.assert_array_equal(got_scores, np.sort(scores)[::-1])
    # ids travel with their scores: same multiset of (score, id) pairs
    pairs = sorted(zip((scores + np.float32(0)).tolist(), ids.tolist(), strict=False))
    assert sorted(zip(got_scores.tolist(), got_ids.tolist(), strict=False)) == pairs
    float64_scores, float64_ids = regions._descending(scores.astype(np.float64), ids)
    np.testing.assert_array_equal(float64_scores, got_scores.astype(np.float64))


def test_device_sort_path_gives_the_same_values(monkeypatch):
    rng = np.random.default_rng(5)
    scores, labels = _scores_labels(rng, 400, levels=30, dtype=np.float32)
    masks = _blob_masks(rng, 4, 12)
    maps = _maps(rng, masks, levels=20)
    expected = (
        metrics.auroc(scores, labels),
        metrics.average_precision(scores, labels),
        metrics.pro(maps, masks),
        metrics.auroc(scores.astype(np.float64) / 3, labels),
    )
    monkeypatch.setattr(_common, "_DEVICE_SORT", True)
    got = (
        metrics.auroc(scores, labels),
        metrics.average_precision(scores, labels),
        metrics.pro(maps, masks),
        metrics.auroc(scores.astype(np.float64) / 3, labels),  # float64 kept on device
    )
    assert got == expected


# ------------------------------------------------------------------------- PRO


@pytest.mark.parametrize("levels", [None, 8])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_pro_matches_mvtec_reference_at_every_distinct_score(levels, max_fpr):
    rng = np.random.default_rng(6)
    masks = _blob_masks(rng, 6, 16)
    maps = _maps(rng, masks, levels=levels)
    assert metrics.pro(maps, masks, max_fpr=max_fpr) == pytest.approx(
        _mvtec_reference_pro(maps, masks, max_fpr, "all"), abs=_TOL
    )


@pytest.mark.parametrize("levels", [None, 9, 60])
@pytest.mark.parametrize("max_fpr", [0.3, 0.123, 1.0])
def test_pro_matches_anomalib_exact_algorithm_with_ties(levels, max_fpr):
    rng = np.random.default_rng(7 + (levels or 0))
    masks = _blob_masks(rng, 7, 15)
    maps = _maps(rng, masks, levels=levels, dtype=np.float32)
    assert metrics.pro(maps, masks, max_fpr=max_fpr) == pytest.approx(
        _anomalib_exact_pro(maps, masks, max_fpr), abs=_TOL
    )


def test_pro_is_within_binning_error_of_the_shipped_mvtec_reference():
    # The shipped reference thresholds at normal scores only: between two of them it
    # joins the points with a diagonal where the exact curve has a step, an error of
    # at most 1 / (2 n_normal) of PRO per unit FPR; its default also bins to 100.
    rng = np.random.default_rng(8)
    masks = _blob_masks(rng, 6, 32)
    maps = _maps(rng, masks)
    exact = metrics.pro(maps, masks)
    n_normal = np.count_nonzero(~masks)
    every_normal = _mvtec_reference_pro(maps, masks, 0.3, "normal")
    assert abs(exact - every_normal) <= 1 / (2 * n_normal * 0.3)
    assert abs(exact - _mvtec_reference_pro(maps, masks, 0.3, "normal-100")) < 1e-2


@pytest.mark.parametrize("levels", [None, 6])
def test_pro_curve_points_are_the_thresholded_fpr_and_pro(levels):
    # Every point is (FPR, PRO) of ``maps >= threshold`` with scikit-image regions.
    rng = np.random.default_rng(9)
    masks = _blob_masks(rng, 4, 10, empty_every=2)
    maps = _maps(rng, masks, levels=levels)
    curve = metrics.pro_curve(maps, masks)
    brute = _brute_force_curve(maps, masks)
    assert (curve.fpr[0], curve.pro[0], curve.thresholds[0]) == (0.0, 0.0, np.inf)
    assert curve.fpr[-1] == 1.0 and curve.pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.pro) >= 0)
    assert np.all(np.diff(curve.thresholds) < 0)
    for f, p, t in zip(curve.fpr[1:], curve.pro[1:], curve.thresholds[1:], strict=True):
        # "just above u" thresholds are nextafter(u): the next distinct score up
        nearest = min(s for s in brute if s >= t)
        ref_f, ref_p = brute[nearest]
        assert f == pytest.approx(ref_f, abs=_TOL) and p == pytest.approx(ref_p)
    # merged points are collinear: the area equals the brute-force curve's
    f, p = np.array([(0.0, 0.0)] + [brute[t] for t in sorted(brute, reverse=True)]).T
    assert metrics.pro(maps, masks, max_fpr=1.0) == pytest.approx(
        _mvtec_trapezoid(f, p, 1.0), abs=_TOL
    )


def test_pro_curve_stops_at_the_first_point_past_max_fpr():
    rng = np.random.default_rng(10)
    masks = _blob_masks(rng, 5, 16)
    maps = _maps(rng, masks)
    full = metrics.pro_curve(maps, masks)
    cut = metrics.pro_curve(maps, masks, max_fpr=0.2)
    assert cut.fpr[-1] >= 0.2 and np.all(cut.fpr[:-1] < 0.2)
    # The cut curve adds the step at the limit (horizontal points the full curve
    # merges); the points before it are the full curve's.
    n = cut.fpr.size - 2
    np.testing.assert_array_equal(cut.fpr[:n], full.fpr[:n])
    np.testing.assert_array_equal(cut.pro[:n], full.pro[:n])
    for limit in (0.2, 0.1, 0.01):
        assert metrics.pro_area(full, max_fpr=limit) == pytest.approx(
            metrics.pro_area(cut, max_fpr=limit), abs=_TOL
        )
    assert metrics.pro_area(cut, max_fpr=0.2) == metrics.pro(maps, masks, max_fpr=0.2)
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.pro_area(cut, max_fpr=0.5)


def test_pro_limit_between_two_points_interpolates_the_tie_segment():
    # One region {0.95, 0.7}; normal 0.9, 0.8, 0.7 (tied with the region pixel), ...
    # Curve: (0,0) (0,.5) (.1,.5) (.2,.5) (.3,1) ...; at FPR .25 the tie segment gives
    # PRO .75: area = .2 * .5 + .05 * (.5 + .75) / 2 = .13125, / .25 = .525.
    normal = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]
    maps = np.array([[0.95, 0.7, *normal]])
    masks = np.array([[1, 1] + [0] * 10])
    assert metrics.pro(maps, masks, max_fpr=0.25) == pytest.approx(0.525, abs=_TOL)
    assert metrics.pro(maps, masks, max_fpr=0.2) == pytest.approx(0.5, abs=_TOL)
    assert metrics.pro(maps, masks, max_fpr=0.3) == pytest.approx(
        (0.1 + 0.1 * 0.75) / 0.3, abs=_TOL
    )


def test_pro_regions_are_8_connected_and_per_image():
    # Pixels (0,0) and (1,1) touch diagonally: with (1,2) one 8-connected region of 3
    # pixels. Only (0,0) scores high: PRO at that point is 1/3 (4-connectivity would
    # give two regions and 1/2).
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    amap = np.full((4, 4), 0.1)
    amap[0, 0] = 1.0
    curve = metrics.pro_curve(amap, mask)
    assert curve.pro[1] == pytest.approx(1 / 3)
    # the same region split over two images: two regions, one fully detected
    masks = np.stack([mask & (np.arange(4) < 1)[None, :], mask & (np.arange(4) >= 1)])
    maps = np.stack([amap, amap])
    assert metrics.pro_curve(maps, masks).pro[1] == pytest.approx(1 / 2)


def test_pro_one_pixel_regions_empty_and_all_normal_images():
    rng = np.random.default_rng(11)
    masks = np.zeros((5, 9, 9), bool)
    masks[1, 4, 4] = masks[3, 0, 8] = masks[3, 8, 0] = True  # one-pixel regions
    maps = _maps(rng, masks)
    expected = _anomalib_exact_pro(maps, masks, 0.3)
    assert metrics.pro(maps, masks) == pytest.approx(expected, abs=_TOL)
    # images without anomalies only add normal pixels
    more = np.concatenate([masks, np.zeros((2, 9, 9), bool)])
    more_maps = np.concatenate([maps, rng.random((2, 9, 9))])
    assert metrics.pro(more_maps, more) == pytest.approx(
        _anomalib_exact_pro(more_maps, more, 0.3), abs=_TOL
    )


@pytest.mark.parametrize("max_fpr", [0.3, 1.0])
def test_pro_regions_scoring_below_every_normal_pixel(max_fpr):
    # no region pixel above the limit: the curve is flat at 0 up to max_fpr
    rng = np.random.default_rng(16)
    masks = _blob_masks(rng, 4, 10)
    maps = np.where(masks, rng.random(masks.shape) - 2.0, rng.random(masks.shape))
    expected = _anomalib_exact_pro(maps, masks, max_fpr)
    assert metrics.pro(maps, masks, max_fpr=max_fpr) == pytest.approx(
        expected, abs=_TOL
    )
    assert expected == 0.0  # even at max_fpr = 1: PRO only rises after FPR 1


def test_pro_undefined_cases_raise():
    maps = np.random.default_rng(12).random((3, 6, 6))
    with pytest.raises(ValueError, match="no anomalous pixel"):
        metrics.pro(maps, np.zeros((3, 6, 6), bool))
    with pytest.raises(ValueError, match="no normal pixel"):
        metrics.pro(maps, np.ones((3, 6, 6), bool))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="max_fpr"):
            metrics.pro(maps, maps > 0.5, max_fpr=bad)
    with pytest.raises(TypeError, match="max_fpr"):
        metrics.pro(maps, maps > 0.5, max_fpr="0.3")


def test_pro_of_empty_images_is_undefined_not_a_reshape_error():
    for shape in [(2, 0, 3), (0, 4, 4), (3, 2, 0)]:
        with pytest.raises(ValueError, match="no anomalous pixel"):
            metrics.pro(np.zeros(shape, np.float32), np.zeros(shape, bool))
        with pytest.raises(ValueError, match="no anomalous pixel"):
            metrics.pro_curve(np.zeros(shape), np.zeros(shape, bool))


def test_max_fpr_accepts_numpy_numbers():
    rng = np.random.default_rng(15)
    masks = _blob_masks(rng, 3, 8)
    maps = _maps(rng, masks)
    assert metrics.pro(maps, masks, max_fpr=np.int64(1)) == metrics.pro(
        maps, masks, max_fpr=1.0
    )
    assert metrics.pro(maps, masks, max_fpr=np.float32(0.25)) == metrics.pro(
        maps, masks, max_fpr=float(np.float32(0.25))
    )
    with pytest.raises(TypeError, match="max_fpr"):
        metrics.pro(maps, masks, max_fpr=np.bool_(True))


@pytest.mark.parametrize("seed", range(12))
def test_pro_curve_and_aupro_stay_in_the_unit_interval(seed):
    # A sum of 1/|r| over the regions can round above R (found by the fuzz suite with
    # seed 5): the curve is clipped to the exact bound 1, so pro_area accepts it.
    rng = np.random.default_rng(seed)
    masks = rng.random((2, 4, 4)) < 0.3
    masks[0, 0, 0], masks[0, 0, 1] = True, False
    maps = rng.random((2, 4, 4)) + masks
    curve = metrics.pro_curve(maps, masks)
    assert curve.pro.max() <= 1.0 and curve.pro[-1] == pytest.approx(1.0, abs=1e-15)
    assert 0.0 <= metrics.pro_area(curve, max_fpr=1.0) <= 1.0
    assert 0.0 <= metrics.pro(maps, masks, max_fpr=1.0) <= 1.0


def test_pro_area_refuses_malformed_curves():
    maps, masks = np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]])
    curve = metrics.pro_curve(maps, masks)
    fpr, pro = curve.fpr, curve.pro
    with pytest.raises(TypeError, match="curve must be a PROCurve"):
        metrics.pro_area((fpr, pro))
    with pytest.raises(TypeError, match="curve must be a PROCurve"):
        metrics.pro_area(None)
    with pytest.raises(TypeError, match="curve.fpr"):
        metrics.pro_area(metrics.PROCurve(["a", "b"], [0.0, 1.0], None))
    with pytest.raises(ValueError, match="curve.fpr contains NaN"):
        metrics.pro_area(metrics.PROCurve(np.where(fpr > 0, np.nan, 0), pro, None))
    with pytest.raises(ValueError, match="curve.pro contains NaN or inf"):
        metrics.pro_area(metrics.PROCurve(fpr, pro + np.inf, None))
    with pytest.raises(ValueError, match="non-decreasing"):
        metrics.pro_area(metrics.PROCurve(fpr[::-1], pro, None), max_fpr=1.0)
    with pytest.raises(ValueError, match="starts at FPR"):
        metrics.pro_area(metrics.PROCurve(np.array([0.5, 1.0]), np.ones(2), None))
    # Lists are curves too.
    assert metrics.pro_area(
        metrics.PROCurve(fpr.tolist(), pro.tolist(), None), max_fpr=0.3
    ) == metrics.pro_area(curve, max_fpr=0.3)


def test_pro_chunking_and_bound_fallback_do_not_change_the_value(monkeypatch):
    rng = np.random.default_rng(13)
    masks = _blob_masks(rng, 9, 14)
    maps = _maps(rng, masks, levels=25, dtype=np.float32)
    expected = metrics.pro(maps, masks)
    monkeypatch.setattr(regions, "_CHUNK", 37)
    monkeypatch.setattr(_common, "_MIN_CHUNK", 40)  # several sorted runs
    monkeypatch.setattr(regions, "_SAMPLE", 50)
    assert metrics.pro(maps, masks) == expected
    # a lower bound that is too high triggers the full pass
    monkeypatch.setattr(regions, "_lower_bound", lambda *args: np.inf)
    assert metrics.pro(maps, masks) == expected


def _spy_binned(monkeypatch):
    """Records what each call of regions._binned_scores returns."""
    built, original = [], regions._binned_scores

    def spy(*args):
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr(regions, "_binned_scores", spy)
    return built


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels", [None, 25])
def test_pro_binned_path_with_zero_tolerance_is_the_exact_curve(
    monkeypatch, dtype, levels
):
    # tolerance 0 refines every bin that holds a region score: nothing is tied, and
    # the curve is the sorted path's, point for point
    rng = np.random.default_rng(17)
    masks = _blob_masks(rng, 9, 24)
    maps = _maps(rng, masks, levels=levels, dtype=dtype)
    expected = metrics.pro_curve(maps, masks, max_fpr=0.3)
    built = _spy_binned(monkeypatch)
    monkeypatch.setattr(regions, "_BINNED_EXACT", True)
    monkeypatch.setattr(regions, "_BINS", 64)
    monkeypatch.setattr(regions, "_SAMPLE", 300)
    monkeypatch.setattr(_common, "_MIN_CHUNK", 700)  # several chunks and runs
    got = metrics.pro_curve(maps, masks, max_fpr=0.3)
    assert len(built) == 1 and built[0] is not None
    assert len(built[0].exact.runs) > 1 and built[0].error_bound == 0.0
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics.pro(maps, masks) == pytest.approx(
        _anomalib_exact_pro(maps, masks, 0.3), abs=_TOL
    )


@pytest.mark.parametrize("tolerance", [0.5, 1e-2, 1e-3, 1e-4, 1e-6])
def test_pro_with_tolerance_is_within_its_error_bound(monkeypatch, tolerance):
    rng = np.random.default_rng(18)
    masks = _blob_masks(rng, 12, 32)
    maps = _maps(rng, masks, dtype=np.float32)
    exact = _anomalib_exact_pro(maps, masks, 0.3)
    built = _spy_binned(monkeypatch)
    monkeypatch.setattr(regions, "_MIN_BINNED", 0)
    monkeypatch.setattr(regions, "_BINS", 16)  # coarse bins: a large bound to cut
    monkeypatch.setattr(regions, "_SAMPLE", 500)
    value = metrics.pro(maps, masks, tolerance=tolerance)
    curve, bound = regions._curve("pro", maps, masks, 0.3, tolerance)
    assert built[0] is not None and built[0].error_bound == bound
    assert value == regions._area(curve.fpr, curve.pro, 0.3)
    assert 0.0 <= bound <= tolerance
    assert abs(value - exact) <= bound + _TOL
    if tolerance == 0.5:  # nothing refined but the limit's bin: binning shows
        assert built[0].refined.sum() == 1
        assert bound > 1e-3 and abs(value - exact) > 1e-5
    else:
        assert built[0].refined.sum() > 1


def test_pro_error_bound_is_reached_by_a_staircase(monkeypatch):
    # Two bins above the limit's bin (lo = 0, bin width 1/4 with _BINS = 4): in
    # [0.75, 1] a region pixel above a normal pixel (the exact curve rises before it
    # moves right), in [0.5, 0.75) only normal pixels. The tied bin turns the step
    # into a diagonal: the error is the whole half rectangle.
    normal = np.array([0.8, 0.6, 0.55, 0.3, 0.2, 0.1, 0.05, 0.0])
    maps = np.concatenate([[0.9], normal])[None, :]
    masks = np.zeros_like(maps, bool)
    masks[0, 0] = True
    monkeypatch.setattr(regions, "_MIN_BINNED", 0)
    monkeypatch.setattr(regions, "_BINS", 4)
    monkeypatch.setattr(regions, "_lower_bound", lambda *args: 0.0)
    monkeypatch.setattr(regions, "_normal_sample", lambda *args: np.array([1.0]))
    exact = metrics.pro(maps, masks, max_fpr=0.5)
    assert exact == 1.0
    value = metrics.pro(maps, masks, max_fpr=0.5, tolerance=0.5)
    _, bound = regions._curve("pro", maps, masks, 0.5, 0.5)
    assert bound == pytest.approx(0.5 * (1 / 8) * 1.0 / 0.5)  # dFPR dPRO / 2 / limit
    assert exact - value == pytest.approx(bound)


def test_pro_with_tolerance_is_exact_when_the_scores_do_not_spread(monkeypatch):
    # every normal score equal: no bin width, so the exact path answers
    rng = np.random.default_rng(19)
    masks = _blob_masks(rng, 6, 16)
    maps = np.where(masks, rng.random(masks.shape) + 0.5, 0.25)
    built = _spy_binned(monkeypatch)
    monkeypatch.setattr(regions, "_MIN_BINNED", 0)
    assert metrics.pro(maps, masks, tolerance=1e-3) == metrics.pro(maps, masks)
    assert built == [None]


def test_pro_jax_inputs_and_shapes():
    rng = np.random.default_rng(14)
    masks = _blob_masks(rng, 4, 8)
    maps = _maps(rng, masks, dtype=np.float32)
    expected = metrics.pro(maps, masks)
    assert metrics.pro(jnp.asarray(maps), jnp.asarray(masks)) == expected
    assert metrics.pro(maps.reshape(2, 2, 8, 8), masks.reshape(2, 2, 8, 8)) == expected
    assert metrics.pro(maps[1], masks[1]) == pytest.approx(
        _anomalib_exact_pro(maps[1:2], masks[1:2], 0.3), abs=_TOL
    )


# ------------------------------------------------------------------ IoU, DICE


def test_iou_and_dice_match_sklearn():
    rng = np.random.default_rng(15)
    gt = _blob_masks(rng, 6, 12)
    pred = gt ^ (rng.random(gt.shape) < 0.1)
    flat_gt, flat_pred = gt.ravel(), pred.ravel()
    assert metrics.iou(pred, gt) == pytest.approx(
        100 * skm.jaccard_score(flat_gt, flat_pred)
    )
    assert metrics.dice(pred, gt) == pytest.approx(
        100 * skm.f1_score(flat_gt, flat_pred)
    )
    per_image = [
        100 * skm.jaccard_score(g.ravel(), p.ravel())
        for g, p in zip(gt, pred, strict=False)
    ]
    np.testing.assert_allclose(metrics.iou(pred, gt, reduction="none"), per_image)
    assert metrics.iou(pred, gt, reduction="mean") == pytest.approx(np.mean(per_image))
    per_image = [
        100 * skm.f1_score(g.ravel(), p.ravel()) for g, p in zip(gt, pred, strict=False)
    ]
    np.testing.assert_allclose(metrics.dice(pred, gt, reduction="none"), per_image)
    assert metrics.dice(jnp.asarray(pred), jnp.asarray(gt.astype(np.uint8))) == (
        pytest.approx(metrics.dice(pred, gt))
    )


def test_iou_and_dice_empty_masks_score_100():
    empty = np.zeros((2, 4, 4), bool)
    one = empty.copy()
    one[1, 0, 0] = True
    for fn in (metrics.iou, metrics.dice):
        assert fn(empty, empty) == 100.0
        np.testing.assert_array_equal(fn(one, empty, reduction="none"), [100.0, 0.0])
        assert fn(one, empty, reduction="mean") == 50.0
        assert fn(one, empty) == 0.0
        assert fn(one[1], one[1], reduction="none").shape == ()


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: metrics.auroc(np.ones(3), np.ones(4)), ValueError, "same shape"),
        (lambda: metrics.auroc(np.ones(3), [0, 2, 1]), ValueError, "binary"),
        (lambda: metrics.auroc(np.ones(3), [0, 255, 0]), ValueError, "mask > 0"),
        (lambda: metrics.auroc(np.ones(3), [0, 0.5, 1]), ValueError, "binary"),
        (lambda: metrics.auroc([0.1, np.nan, 0.2], [0, 1, 0]), ValueError, "NaN"),
        (lambda: metrics.auroc([0.1, np.inf, 0.2], [0, 1, 0]), ValueError, "scores"),
        (lambda: metrics.auroc(np.arange(3), [0, 1, 0]), TypeError, "floating"),
        (lambda: metrics.auroc("abc", [0, 1, 0]), TypeError, "scores"),
        (
            lambda: metrics.average_precision(np.ones(2), ["a", "b"]),
            TypeError,
            "labels",
        ),
        (lambda: metrics.pro(np.ones(4), np.ones(4)), ValueError, r"\(\.\.\., H, W\)"),
        (lambda: metrics.pro(np.ones((2, 4)), np.ones((4, 2))), ValueError, "maps and"),
        (
            lambda: metrics.pro(np.ones((2, 4)), np.eye(2, 4), tolerance=-0.1),
            ValueError,
            "tolerance",
        ),
        (
            lambda: metrics.pro(np.ones((2, 4)), np.eye(2, 4), tolerance=float("nan")),
            ValueError,
            "tolerance",
        ),
        (
            lambda: metrics.pro(np.ones((2, 4)), np.eye(2, 4), tolerance="1e-6"),
            TypeError,
            "tolerance",
        ),
        (
            lambda: metrics.pro(np.ones((2, 4)), np.ones((2, 4)) * 3),
            ValueError,
            "masks",
        ),
        (
            lambda: metrics.iou(np.ones((2, 2)), np.ones((2, 3))),
            ValueError,
            "pred and gt",
        ),
        (lambda: metrics.iou(np.ones(4), np.ones(4)), ValueError, "H, W"),
        (
            lambda: metrics.dice(np.ones((2, 2)), np.ones((2, 2)), reduction="sum"),
            ValueError,
            "reduction",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_overflowing_sum_of_finite_scores_is_accepted():
    scores = np.array([3e38, 3e38, -1.0, 2.0], np.float32)
    labels = np.array([1, 0, 0, 1])
    assert metrics.auroc(scores, labels) == skm.roc_auc_score(labels, scores)


@pytest.mark.parametrize(
    "module", ["jad.metrics.roc", "jad.metrics.regions", "jad.metrics.masks"]
)
def test_docstring_examples(module):
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0
    assert failed == 0
