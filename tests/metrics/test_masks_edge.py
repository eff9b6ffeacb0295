"""jad.metrics.iou / dice on empty inputs: no pixel at all, and an empty union."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jad.metrics import dice, iou

REDUCTIONS = ["pooled", "mean", "none"]


@pytest.mark.parametrize("fn", [iou, dice], ids=["iou", "dice"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 4), (2, 4, 0), (0, 0), (3, 0, 0)])
def test_masks_without_pixels_are_refused(fn, reduction, shape):
    # No image (or no pixel): "mean" used to return NaN with a RuntimeWarning and
    # "pooled" a perfect 100 for a comparison of nothing.
    empty = np.zeros(shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ValueError,
            match=rf"{fn.__name__}: pred and gt must hold at least one pixel .*"
            rf"got shape \({shape[0]}, ",
        ):
            fn(empty, empty, reduction=reduction)
        with pytest.raises(ValueError, match=f"{fn.__name__}: pred and gt"):
            fn(jnp.asarray(empty), jnp.asarray(empty, jnp.uint8), reduction=reduction)


@pytest.mark.parametrize("fn", [iou, dice], ids=["iou", "dice"])
def test_empty_union_scores_100_without_warnings(fn):
    # Both masks empty (the union is empty): a documented perfect agreement, per
    # image and pooled, never NaN.
    empty = np.zeros((3, 4, 5), bool)
    one = empty.copy()
    one[2, 1, 1] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(empty, empty) == 100.0
        assert fn(empty, empty, reduction="mean") == 100.0
        np.testing.assert_array_equal(fn(empty, empty, reduction="none"), [100.0] * 3)
        np.testing.assert_array_equal(
            fn(one, one, reduction="none"), [100.0, 100.0, 100.0]
        )
        # An image where only one mask is set scores 0; the others 100.
        np.testing.assert_array_equal(
            fn(one, empty, reduction="none"), [100.0, 100.0, 0.0]
        )
        assert fn(empty[0], empty[0]) == 100.0  # one (H, W) image
        assert fn(np.zeros((1, 1), bool), np.zeros((1, 1), bool)) == 100.0
