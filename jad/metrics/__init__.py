"""Evaluation metrics: AUROC, AP, F1-optimal threshold, PRO, IoU and DICE.

Host-side utilities for test sets: they take numpy or JAX arrays of any matching
shape, are exact (sort-based, ties as scikit-learn, nothing binned unless :func:`pro`
is given a ``tolerance``), run in seconds on 1e8 pixels with memory linear in the
input, and return Python floats and numpy arrays. They are not jittable or
differentiable. ``labels``/``masks`` are bool or 0/1 with 1 = anomalous; a score at
or above a threshold predicts anomalous.

- :mod:`jad.metrics.roc`: :func:`auroc`, :func:`average_precision`,
  :func:`f1_optimal_threshold`, :func:`roc_curve`, :func:`precision_recall_curve`.
- :mod:`jad.metrics.regions`: :func:`pro` (AUPRO), :func:`pro_curve`,
  :func:`pro_area`.
- :mod:`jad.metrics.masks`: :func:`iou`, :func:`dice` (x100).
- Input checks: :func:`as_scores` (floating, NaN and inf refused) and
  :func:`as_binary` (bool or 0/1), the ones every metric runs on its inputs, for
  code that takes the same inputs and should refuse what the metrics refuse
  (:mod:`jad.viz` does).
"""

from jad.metrics._common import as_binary, as_scores
from jad.metrics.masks import dice, iou
from jad.metrics.regions import PROCurve, pro, pro_area, pro_curve
from jad.metrics.roc import (
    F1Threshold,
    PRCurve,
    ROCCurve,
    auroc,
    average_precision,
    f1_optimal_threshold,
    precision_recall_curve,
    roc_curve,
)

__all__ = [
    "F1Threshold",
    "PRCurve",
    "PROCurve",
    "ROCCurve",
    "as_binary",
    "as_scores",
    "auroc",
    "average_precision",
    "dice",
    "f1_optimal_threshold",
    "iou",
    "precision_recall_curve",
    "pro",
    "pro_area",
    "pro_curve",
    "roc_curve",
]
