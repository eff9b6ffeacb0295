"""Tests of jad.methods.base: the shared post-processing and its argument checks.

References: the upsampling is ``jad.ops.resize`` (itself tested against PyTorch in
``tests/ops``), the blur ``scipy.ndimage.gaussian_filter`` (``mode="reflect"``,
``truncate=4``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.ndimage as ndi

from jad import ops
from jad.methods import postprocess


@pytest.fixture
def patch_map(rng):
    return rng.standard_normal((2, 4, 4)).astype(np.float32)


def test_postprocess_is_resize_then_scipy_blur(patch_map):
    out = np.asarray(postprocess(patch_map, (8, 8), sigma=1.0))
    up = np.asarray(ops.resize(patch_map, (8, 8)), np.float64)
    ref = np.stack([ndi.gaussian_filter(m, 1.0, mode="reflect") for m in up])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)  # float32 sums
    # sigma 0 (and a numpy or int 0): no blur
    for zero in (0.0, 0, np.float32(0.0)):
        unblurred = postprocess(patch_map, (8, 8), sigma=zero)
        np.testing.assert_array_equal(np.asarray(unblurred), up.astype(np.float32))


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf")])
def test_postprocess_refuses_negative_nan_or_inf_sigma(patch_map, sigma):
    # -1 and NaN used to skip the blur silently.
    with pytest.raises(ValueError, match="postprocess: sigma must be a finite number"):
        postprocess(patch_map, (8, 8), sigma=sigma)


def test_postprocess_bad_arguments(patch_map):
    for sigma in ("1", None, True, 1 + 2j):
        with pytest.raises(TypeError, match="postprocess: sigma must be a real"):
            postprocess(patch_map, (8, 8), sigma=sigma)
    with pytest.raises(ValueError, match="postprocess: sigma must be a scalar"):
        postprocess(patch_map, (8, 8), sigma=np.array([1.0, 2.0]))
    for size in (None, (8,), "ab", (8, 8, 8)):
        with pytest.raises(ValueError, match=r"image_size must be a pair \(H, W\)"):
            postprocess(patch_map, size)
    with pytest.raises(TypeError, match="postprocess: image_size must be a Python"):
        postprocess(patch_map, (8.0, 8))
    with pytest.raises(ValueError, match="postprocess: image_size must be >= 1"):
        postprocess(patch_map, (0, 8))
    with pytest.raises(ValueError, match="postprocess: upsample must be one of"):
        postprocess(patch_map, (8, 8), upsample="area")
    with pytest.raises(ValueError, match="postprocess: blur_mode must be one of"):
        postprocess(patch_map, (8, 8), blur_mode="mirror")
    for dtype in (bool, np.int32):
        with pytest.raises(TypeError, match="postprocess: patch_map must have a flo"):
            postprocess(patch_map.astype(dtype), (8, 8), upsample="nearest")
    with pytest.raises(ValueError, match="patch_map must have at least 2 dimensions"):
        postprocess(patch_map[0, 0], (8, 8))
    with pytest.raises(ValueError, match=r"patch_map must be \(B, h, w\) with h, w"):
        postprocess(patch_map[:, :0], (8, 8))


def test_postprocess_under_jit_checks_shapes_and_refuses_a_traced_sigma(patch_map):
    jitted = jax.jit(lambda m: postprocess(m, (8, 8), sigma=1.0))
    np.testing.assert_allclose(
        np.asarray(jitted(patch_map)),
        np.asarray(postprocess(patch_map, (8, 8), sigma=1.0)),
        rtol=1e-6, atol=1e-6,
    )
    with pytest.raises(TypeError, match="patch_map must have a floating dtype"):
        jax.jit(lambda m: postprocess(m > 0, (8, 8)))(patch_map)
    # sigma sets the radius int(4 sigma + 0.5): it must be concrete.
    with pytest.raises(TypeError, match="postprocess: sigma must be a concrete"):
        jax.jit(lambda s: postprocess(patch_map, (8, 8), sigma=s))(1.0)
    assert postprocess(patch_map[:0], (8, 8)).shape == (0, 8, 8)  # an empty batch
