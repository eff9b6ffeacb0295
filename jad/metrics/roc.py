"""Ranking metrics of binary labels: ROC and precision-recall curves, AUROC, AP, F1.

Used for image-level scores (one score per image) and pixel-level scores (every pixel
of every anomaly map of a test set, e.g. 1725 maps of 256 x 256 = 113M pixels), so the
algorithms are exact, sort-based and linear in memory:

1. split the scores into positives (label 1) and negatives (label 0) and sort each
   (see :mod:`jad.metrics._common`: numpy on a CPU, ``jnp.sort`` on an accelerator);
2. for each distinct positive score ``u`` count the negatives below and equal to it
   with binary search (``np.searchsorted``): O(P log N) for P positives, N negatives.

Every quantity then follows from integer counts at distinct thresholds: the ROC and
precision-recall curves are step functions of the threshold, and a curve point is
``(# negatives >= t, # positives >= t)``. Points are taken at every *distinct* score, so
tied scores form one step exactly as in scikit-learn; nothing is binned.

Conventions: ``labels`` are bool (or 0/1 numbers), 1 = anomalous; a score at or above a
threshold predicts anomalous (``scores >= threshold``). Inputs may be numpy or JAX
arrays of any shape (flattened); ``scores`` and ``labels`` must have the same shape.
Results are Python floats and float64 numpy arrays (host-side, not jittable).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jad.metrics import _common

__all__ = [
    "F1Threshold",
    "PRCurve",
    "ROCCurve",
    "auroc",
    "average_precision",
    "f1_optimal_threshold",
    "precision_recall_curve",
    "roc_curve",
]

# AUROC's numerator sum(count * (#below + #below-or-equal)) <= 2 P N must fit in int64.
_MAX_SIZE = 2**32 - 1


class ROCCurve(NamedTuple):
    """Receiver operating characteristic, as scikit-learn's ``roc_curve``.

    Attributes:
      fpr: (T + 1,) float64 false-positive rate at each threshold, increasing; starts
        at 0.
      tpr: (T + 1,) float64 true-positive rate (recall), increasing; starts at 0.
      thresholds: (T + 1,) float64, decreasing: ``inf`` and then the T distinct
        scores. Point i counts ``scores >= thresholds[i]`` as anomalous.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


class PRCurve(NamedTuple):
    """Precision-recall curve, as scikit-learn's ``precision_recall_curve``.

    Attributes:
      precision: (T + 1,) float64; entry i is the precision of ``scores >=
        thresholds[i]``; the last entry is 1 (no threshold), as in scikit-learn.
      recall: (T + 1,) float64, decreasing; the last entry is 0.
      thresholds: (T,) float64 distinct scores, increasing.
    """

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray


class F1Threshold(NamedTuple):
    """Result of :func:`f1_optimal_threshold`.

    Attributes:
      threshold: the score threshold; predict anomalous where ``scores >= threshold``.
      f1: the F1 score at that threshold, in [0, 1].
    """

    threshold: float
    f1: float


class _Split(NamedTuple):
    pos: np.ndarray  # (P,) scores of label 1, sorted ascending
    neg: _common.SortedRuns  # the N scores of label 0, as sorted runs


def _split(fn: str, scores, labels, *, need_negatives: bool) -> _Split:
    """Validates the pair and returns the sorted positive and negative scores.

    Each core splits and sorts its own chunk (see :func:`_common.map_chunks`); the
    few positives are merged into one array, the negatives stay as runs.
    """
    scores = _common.as_scores(fn, "scores", scores)
    labels = _common.as_binary(fn, "labels", labels)
    _common.check_same_shape(fn, ("scores", "labels"), scores, labels)
    if scores.size > _MAX_SIZE:
        raise ValueError(
            f"{fn}: at most {_MAX_SIZE} scores are supported; got {scores.size}."
        )
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    num_pos = int(np.count_nonzero(labels))
    if num_pos == 0:
        raise ValueError(
            f"{fn}: labels contain no positive (anomalous) entry; the metric is "
            "undefined."
        )
    if need_negatives and num_pos == scores.size:
        raise ValueError(
            f"{fn}: labels contain no negative (normal) entry; the metric is undefined."
        )

    def split_and_sort(chunk: slice) -> tuple[np.ndarray, np.ndarray]:
        s, lab = scores[chunk], labels[chunk]
        return _common.sort_scratch(s[lab]), _common.sort_scratch(s[~lab])

    parts = _common.map_chunks(split_and_sort, scores.size)
    pos = _common.merge_sorted([p for p, _ in parts])
    return _Split(pos, _common.SortedRuns(tuple(n for _, n in parts)))


def _positive_steps(split: _Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct positive scores, descending, with (# pos >= u, # neg >= u) (int64).

    Curve points at thresholds holding no positive only add false positives, so they
    never contribute to AUROC's area beyond what these counts give, to AP (the recall
    does not move) or to the F1 maximum (F1 drops).
    """
    values, ends = _common.distinct(split.pos)
    below = np.concatenate(([0], ends[:-1] + 1))  # positives < values[j]
    tp = split.pos.size - below
    fp = split.neg.size - split.neg.count_below(values)
    return values[::-1], tp[::-1].astype(np.int64), fp[::-1].astype(np.int64)


def _all_steps(split: _Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All distinct scores, descending, with (# pos >= t, # neg >= t) (int64)."""
    both = _common.merge_sorted([_common.distinct(split.pos)[0], split.neg.distinct()])
    values = _common.distinct(both)[0][::-1]
    tp = split.pos.size - np.searchsorted(split.pos, values, side="left")
    fp = split.neg.size - split.neg.count_below(values)
    return values, tp.astype(np.int64), fp.astype(np.int64)


def auroc(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> float:
    """Area under the ROC curve, exactly as scikit-learn's ``roc_auc_score``.

    Image AUROC (one score per image) and pixel AUROC (all pixels of all maps) alike.
    The trapezoid over the ROC points at every distinct score equals the Mann-Whitney
    statistic with ties counted one half,
    ``AUROC = sum_p (#neg < s_p + #neg == s_p / 2) / (P N)``, which is what is
    computed: one sort of the negatives (a chunk per core), binary search of the
    distinct positive scores, and an integer (int64) numerator.

    Args:
      scores: (...) float anomaly scores, any shape; numpy or JAX. float16/bfloat16
        are widened to float32.
      labels: (...) bool or 0/1 numbers, the same shape; 1 = anomalous.

    Returns:
      AUROC in [0, 1] as a Python float.

    Raises:
      ValueError: shapes differ, labels not binary, only one class present, NaN or
        inf scores.
      TypeError: non-floating ``scores``, non-numeric ``labels``.

    Note:
      Precision: the numerator is an exact int64 and the one division is correctly
      rounded, so the result is the exact AUROC to float64 rounding (scikit-learn's
      float64 trapezoid agrees to about 1e-15). Cost: one sort of the N negatives
      plus O(P log N); memory: one float copy of the scores.

    Example:
      >>> from jad.metrics import auroc
      >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
      0.75
    """
    split = _split("auroc", scores, labels, need_negatives=True)
    values, ends = _common.distinct(split.pos)
    counts = np.diff(ends, prepend=-1).astype(np.int64)
    below, below_or_tied = split.neg.counts_below(values)
    numerator = int(np.dot(counts, below + below_or_tied))
    return numerator / (2 * split.pos.size * split.neg.size)


def average_precision(
    scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> float:
    """Average precision, exactly as scikit-learn's ``average_precision_score``.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in
    decreasing order (no interpolation), with ``P_n`` and ``R_n`` the precision and
    recall of ``scores >= t_n``. Only thresholds holding a positive move the recall,
    so the sum runs over the distinct positive scores.

    Args:
      scores: (...) float anomaly scores, any shape; numpy or JAX.
      labels: (...) bool or 0/1 numbers, the same shape; 1 = anomalous.

    Returns:
      AP in [0, 1] as a Python float.

    Raises:
      ValueError: shapes differ, labels not binary, no positive label, NaN or inf.
      TypeError: non-floating ``scores``, non-numeric ``labels``.

    Note:
      Counts are exact int64; the sum is float64 (pairwise), within ~1e-15 of the
      exact value. With no negative label AP is 1.

    Example:
      >>> from jad.metrics import average_precision
      >>> round(average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 4)
      0.8333
    """
    split = _split("average_precision", scores, labels, need_negatives=False)
    _, tp, fp = _positive_steps(split)
    gained = np.diff(tp, prepend=0)
    return float(np.sum(gained * (tp / (tp + fp)))) / split.pos.size


def f1_optimal_threshold(
    scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> F1Threshold:
    """The threshold that maximises F1 on the precision-recall curve.

    How PaDiM's official code and F2PAD binarise maps (PaDiM's "optimal threshold":
    ``precision_recall_curve`` over all test pixels of a category, then the argmax of
    ``F1 = 2PR / (P + R)``). Computed from exact counts as
    ``F1 = 2 TP / (TP + FP + #positives)`` at each distinct score.

    Args:
      scores: (...) float anomaly scores, any shape; numpy or JAX.
      labels: (...) bool or 0/1 numbers, the same shape; 1 = anomalous.

    Returns:
      :class:`F1Threshold` ``(threshold, f1)`` of Python floats. The threshold is one
      of the scores; predict anomalous where ``scores >= threshold``.

    Raises:
      ValueError: shapes differ, labels not binary, no positive label, NaN or inf.
      TypeError: non-floating ``scores``, non-numeric ``labels``.

    Note:
      When several thresholds reach the same maximal F1 the lowest one is returned,
      which is what ``np.argmax`` over scikit-learn's increasing thresholds picks.
      PaDiM's code then writes ``mask[scores > threshold] = 1`` (strict); jad's
      threshold is meant for ``>=``, the convention of the curve it comes from.

    Example:
      >>> from jad.metrics import f1_optimal_threshold
      >>> f1_optimal_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
      F1Threshold(threshold=0.35, f1=0.8)
    """
    split = _split("f1_optimal_threshold", scores, labels, need_negatives=False)
    values, tp, fp = _positive_steps(split)
    f1 = 2.0 * tp / (tp + fp + split.pos.size)
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # last maximum = lowest threshold
    return F1Threshold(float(values[best]), float(f1[best]))


def roc_curve(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> ROCCurve:
    """ROC curve at every distinct score, as scikit-learn's ``roc_curve``.

    Equal to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``:
    a first point (0, 0) at threshold ``inf``, then one point per distinct score in
    decreasing order. For plotting pixel-level curves (one point per distinct score,
    up to the number of pixels) subsample the returned arrays.

    Args:
      scores: (...) float anomaly scores, any shape; numpy or JAX.
      labels: (...) bool or 0/1 numbers, the same shape; 1 = anomalous.

    Returns:
      :class:`ROCCurve` ``(fpr, tpr, thresholds)`` of (T + 1,) float64 arrays.

    Raises:
      ValueError: shapes differ, labels not binary, only one class present, NaN or
        inf scores.
      TypeError: non-floating ``scores``, non-numeric ``labels``.

    Example:
      >>> from jad.metrics import roc_curve
      >>> curve = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
      >>> curve.fpr.tolist(), curve.tpr.tolist()
      ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    split = _split("roc_curve", scores, labels, need_negatives=True)
    values, tp, fp = _all_steps(split)
    return ROCCurve(
        fpr=np.concatenate(([0.0], fp / split.neg.size)),
        tpr=np.concatenate(([0.0], tp / split.pos.size)),
        thresholds=np.concatenate(([np.inf], values.astype(np.float64))),
    )


def precision_recall_curve(
    scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> PRCurve:
    """Precision-recall curve, as scikit-learn's ``precision_recall_curve``.

    One point per distinct score in increasing threshold order, then the point
    (recall 0, precision 1) without a threshold, exactly as scikit-learn (default
    ``drop_intermediate=False``).

    Args:
      scores: (...) float anomaly scores, any shape; numpy or JAX.
      labels: (...) bool or 0/1 numbers, the same shape; 1 = anomalous.

    Returns:
      :class:`PRCurve` ``(precision, recall, thresholds)``: (T + 1,), (T + 1,) and
      (T,) float64 arrays.

    Raises:
      ValueError: shapes differ, labels not binary, no positive label, NaN or inf.
      TypeError: non-floating ``scores``, non-numeric ``labels``.

    Example:
      >>> from jad.metrics import precision_recall_curve
      >>> curve = precision_recall_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
      >>> curve.recall.tolist()
      [1.0, 1.0, 0.5, 0.5, 0.0]
    """
    split = _split("precision_recall_curve", scores, labels, need_negatives=False)
    values, tp, fp = _all_steps(split)
    return PRCurve(
        precision=np.concatenate(((tp / (tp + fp))[::-1], [1.0])),
        recall=np.concatenate(((tp / split.pos.size)[::-1], [0.0])),
        thresholds=values[::-1].astype(np.float64),
    )
