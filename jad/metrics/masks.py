"""Overlap of binary segmentation masks: IoU and DICE (F2PAD eq. 17), in percent.

``pred`` and ``gt`` are (..., H, W) bool or 0/1 masks (numpy or JAX); leading axes are
images. Binarise anomaly maps first, e.g. ``maps >= threshold`` with the threshold of
:func:`jad.metrics.f1_optimal_threshold` (as F2PAD and PaDiM do). ``reduction`` says
how images are combined:

- ``"pooled"`` (default): one ratio over all pixels of all images, the dataset-level
  figure (F2PAD reports IoU and DICE per dataset);
- ``"mean"``: the ratio of each image, averaged over images;
- ``"none"``: the (...) array of per-image ratios.

An image (or, pooled, a set) where both masks are empty agrees perfectly and scores
100; filter such images out with ``reduction="none"`` when they should not count.
Masks without any pixel (a zero-size array: no image, or H or W = 0) are refused:
there is nothing to compare, and a mean over no images has no value.
"""

from __future__ import annotations

import jax
import numpy as np

from jad import _checks
from jad.metrics import _common

__all__ = ["dice", "iou"]

_REDUCTIONS = ("pooled", "mean", "none")


def _counts(fn: str, pred, gt, reduction: str):
    """Per-image (|P ∩ G|, |P|, |G|) as int64 arrays of shape (...)."""
    _checks.check_choice(fn, "reduction", reduction, _REDUCTIONS)
    pred = _common.as_binary(fn, "pred", pred)
    gt = _common.as_binary(fn, "gt", gt)
    _common.check_same_shape(fn, ("pred", "gt"), pred, gt)
    if pred.ndim < 2:
        raise ValueError(
            f"{fn}: pred and gt must be (..., H, W) masks; got shape {pred.shape}."
        )
    if pred.size == 0:
        raise ValueError(
            f"{fn}: pred and gt must hold at least one pixel (one image with H, W >= "
            f"1); got shape {pred.shape}."
        )
    axes = (-2, -1)
    both = np.count_nonzero(pred & gt, axis=axes)
    return (
        np.asarray(both, np.int64),
        np.asarray(np.count_nonzero(pred, axis=axes), np.int64),
        np.asarray(np.count_nonzero(gt, axis=axes), np.int64),
    )


def _reduce(numerator: np.ndarray, denominator: np.ndarray, reduction: str):
    """100 * num / den per image or pooled; 100 where den == 0 (both masks empty)."""
    if reduction == "pooled":
        num, den = int(numerator.sum()), int(denominator.sum())
        return 100.0 if den == 0 else 100.0 * num / den
    ratio = 100.0 * numerator / np.maximum(denominator, 1)
    ratio = np.where(denominator == 0, 100.0, ratio)
    return float(ratio.mean()) if reduction == "mean" else ratio


def iou(
    pred: jax.typing.ArrayLike, gt: jax.typing.ArrayLike, *, reduction: str = "pooled"
) -> float | np.ndarray:
    """Intersection over union of binary masks, x100 (F2PAD eq. 17).

    ``IoU = |P ∩ G| / |P ∪ G| x 100`` with P the predicted and G the ground-truth
    anomalous pixels.

    Args:
      pred: (..., H, W) bool or 0/1 predicted masks; numpy or JAX.
      gt: (..., H, W) bool or 0/1 ground-truth masks, the same shape.
      reduction: ``"pooled"`` (one ratio over all pixels), ``"mean"`` (mean of
        per-image ratios) or ``"none"`` (per-image ratios).

    Returns:
      A Python float in [0, 100] (``"pooled"``, ``"mean"``), or a (...) float64
      array (``"none"``). Where both masks are empty (an empty union: no
      anomalous pixel predicted or present) the IoU is 100, by convention: the
      masks agree perfectly. This holds per image and, pooled, for the whole set.

    Raises:
      ValueError: shapes differ, rank < 2, zero-size masks (no image or no pixel),
        masks not binary, unknown ``reduction``.
      TypeError: non-numeric masks.

    Example:
      >>> import numpy as np
      >>> from jad.metrics import iou
      >>> round(iou(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]])), 4)
      33.3333
    """
    both, size_pred, size_gt = _counts("iou", pred, gt, reduction)
    return _reduce(both, size_pred + size_gt - both, reduction)  # F2PAD eq. 17


def dice(
    pred: jax.typing.ArrayLike, gt: jax.typing.ArrayLike, *, reduction: str = "pooled"
) -> float | np.ndarray:
    """DICE (F1 of pixels) of binary masks, x100 (F2PAD eq. 17).

    ``DICE = 2 |P ∩ G| / (|P| + |G|) x 100`` with P the predicted and G the
    ground-truth anomalous pixels.

    Args:
      pred: (..., H, W) bool or 0/1 predicted masks; numpy or JAX.
      gt: (..., H, W) bool or 0/1 ground-truth masks, the same shape.
      reduction: ``"pooled"`` (one ratio over all pixels), ``"mean"`` (mean of
        per-image ratios) or ``"none"`` (per-image ratios).

    Returns:
      A Python float in [0, 100] (``"pooled"``, ``"mean"``), or a (...) float64
      array (``"none"``). Where both masks are empty (an empty union: no
      anomalous pixel predicted or present) the DICE is 100, by convention: the
      masks agree perfectly. This holds per image and, pooled, for the whole set.

    Raises:
      ValueError: shapes differ, rank < 2, zero-size masks (no image or no pixel),
        masks not binary, unknown ``reduction``.
      TypeError: non-numeric masks.

    Example:
      >>> import numpy as np
      >>> from jad.metrics import dice
      >>> dice(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]))
      50.0
    """
    both, size_pred, size_gt = _counts("dice", pred, gt, reduction)
    return _reduce(2 * both, size_pred + size_gt, reduction)  # F2PAD eq. 17
