"""Tests of jad.ops.patches: unfold, avg_pool, adaptive_avg_pool, align_levels.

References: torch's ``F.unfold``, ``F.avg_pool2d`` and ``F.adaptive_avg_pool1d``
(float64, where torch is installed), the numpy loops of ``tests/references.py``, and
:func:`jad.ops.resize` (itself tested against ``F.interpolate``) for the alignment.
"""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from references import adaptive_avg_pool_np, avg_pool_np, unfold_np

import jad.ops.patches
from jad.ops import adaptive_avg_pool, align_levels, avg_pool, resize, unfold

TRANSFORMS = [lambda f: f, jax.jit]


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()


# -------------------------------------------------------------------------- unfold


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 5, 4, 3), 3), ((1, 6, 7, 2), 5), ((2, 1, 1, 4), 3), ((1, 3, 2, 2), 1)],
)
def test_unfold_matches_torch_unfold(rng, shape, size):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    b, h, w, c = shape
    ref = torch.nn.functional.unfold(_nchw(torch, x), size, padding=size // 2)
    ref = ref.numpy().reshape(b, c * size * size, h, w).transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        got = unfold(jnp.asarray(x), size)
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=0)  # a copy


@pytest.mark.parametrize(("shape", "size"), [((2, 5, 4, 3), 3), ((1, 4, 6, 2), 5)])
def test_unfold_matches_numpy_loop(rng, shape, size):
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(unfold(x, size)), unfold_np(x, size))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_unfold_jit_equals_nojit_and_leading_axes(rng, transform):
    x = rng.standard_normal((2, 3, 5, 4, 2)).astype(np.float32)
    got = transform(lambda x: unfold(x, 3))(x)
    assert got.shape == (2, 3, 5, 4, 18)
    for i in range(2):  # (..., h, w, C): each leading index is an independent batch
        np.testing.assert_array_equal(np.asarray(got[i]), unfold_np(x[i], 3))


def test_unfold_gradient_float64(x64, rng):
    x = jnp.asarray(rng.standard_normal((1, 3, 2, 2)))
    check_grads(lambda x: unfold(x, 3), (x,), order=1, modes=("fwd", "rev"))


def test_unfold_bad_input():
    x = np.ones((1, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="unfold: size must be odd"):
        unfold(x, 2)
    with pytest.raises(ValueError, match="unfold: size must be >= 1"):
        unfold(x, 0)
    with pytest.raises(TypeError, match="unfold: size must be a Python int"):
        unfold(x, 3.0)
    with pytest.raises(TypeError, match="unfold: x must have a floating dtype"):
        unfold(x.astype(np.int32), 3)
    with pytest.raises(ValueError, match="unfold: x must have at least 3 dim"):
        unfold(np.ones((3, 3), np.float32), 3)
    with pytest.raises(ValueError, match=r"unfold: x must be \(\.\.\., h, w, C\)"):
        unfold(np.ones((1, 0, 3, 2), np.float32), 3)


# ------------------------------------------------------------------------ avg_pool


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 5, 4, 3), 3), ((1, 6, 7, 2), 5), ((1, 4, 4, 2), 2), ((2, 1, 1, 3), 3)],
)
def test_avg_pool_matches_torch_avg_pool2d(rng, shape, size):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    ref = (
        torch.nn.functional.avg_pool2d(
            _nchw(torch, x), size, 1, size // 2, count_include_pad=True
        )
        .numpy()
        .transpose(0, 2, 3, 1)
    )
    with jax.enable_x64(True):
        got = avg_pool(jnp.asarray(x), size)
    assert got.shape == ref.shape  # h + 1, w + 1 for an even size, as torch
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_avg_pool_matches_numpy_loop(rng, size):
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    # float32 sums of at most 9 terms: 1e-6 relative
    np.testing.assert_allclose(
        np.asarray(avg_pool(x, size)), avg_pool_np(x, size), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_avg_pool_jit_equals_nojit_and_leading_axes(rng, transform):
    x = rng.standard_normal((3, 2, 4, 5, 2)).astype(np.float32)
    got = transform(lambda x: avg_pool(x, 3))(x)
    np.testing.assert_array_equal(
        np.asarray(got), np.stack([np.asarray(avg_pool(x[i], 3)) for i in range(3)])
    )


def test_avg_pool_keeps_dtype_and_gradient_float64(x64, rng):
    assert avg_pool(np.ones((1, 3, 3, 1), np.float16), 3).dtype == jnp.float16
    x = jnp.asarray(rng.standard_normal((1, 3, 4, 2)))
    check_grads(lambda x: avg_pool(x, 3), (x,), order=1, modes=("fwd", "rev"))


def test_avg_pool_bad_input():
    with pytest.raises(ValueError, match="avg_pool: size must be >= 1"):
        avg_pool(np.ones((1, 3, 3, 2), np.float32), 0)
    with pytest.raises(TypeError, match="avg_pool: x must have a floating dtype"):
        avg_pool(np.ones((1, 3, 3, 2), bool), 3)
    with pytest.raises(ValueError, match=r"avg_pool: x must be \(\.\.\., h, w, C\)"):
        avg_pool(np.ones((1, 3, 0, 2), np.float32), 3)


# ----------------------------------------------------------------- adaptive_avg_pool


@pytest.mark.parametrize(
    ("length", "size"),
    [(144, 1024), (1080, 1024), (10, 3), (7, 7), (2048, 1024), (5, 13)],
)
def test_adaptive_avg_pool_matches_torch(rng, length, size):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, length)).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool1d(
        torch.from_numpy(x.astype(np.float64))[:, None], size
    )[:, 0].numpy()
    got = adaptive_avg_pool(jnp.asarray(x), size)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("length", "size"), [(10, 3), (5, 13), (9, 9), (1, 4)])
def test_adaptive_avg_pool_matches_numpy_loop_float64(x64, rng, length, size):
    x = rng.standard_normal((2, 3, length))
    np.testing.assert_allclose(
        np.asarray(adaptive_avg_pool(x, size)),
        adaptive_avg_pool_np(x, size),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_adaptive_avg_pool_jit_equals_nojit(rng, transform):
    x = rng.standard_normal((4, 37)).astype(np.float32)
    got = transform(lambda x: adaptive_avg_pool(x, 8))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(adaptive_avg_pool(x, 8)))


def test_adaptive_avg_pool_gradient_float64(x64, rng):
    x = jnp.asarray(rng.standard_normal((2, 7)))
    check_grads(lambda x: adaptive_avg_pool(x, 3), (x,), order=1, modes=("fwd", "rev"))


def test_adaptive_avg_pool_validates_x_and_size():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_allclose(adaptive_avg_pool(x, 3), x.reshape(2, 3, 2).mean(-1))
    for size in (None, 2.0, True, "2"):
        with pytest.raises(TypeError, match="adaptive_avg_pool: size must be"):
            adaptive_avg_pool(x, size)
    for size in (0, -1):
        with pytest.raises(ValueError, match="adaptive_avg_pool: size must be >= 1"):
            adaptive_avg_pool(x, size)
    with pytest.raises(ValueError, match="x must have at least 1 dimensions"):
        adaptive_avg_pool(np.float32(1.0), 2)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., L\) with L >= 1"):
        adaptive_avg_pool(np.ones((2, 0), np.float32), 2)  # was NaN
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        adaptive_avg_pool(x.astype(np.int32), 3)


# --------------------------------------------------------------------- align_levels


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_align_levels_resizes_to_the_first_grid(rng, method, transform):
    levels = [
        rng.standard_normal((2, 8, 6, 3)).astype(np.float32),
        rng.standard_normal((2, 4, 3, 5)).astype(np.float32),
        rng.standard_normal((2, 8, 6, 2)).astype(np.float32),
    ]
    got = transform(lambda *f: align_levels(list(f), method=method))(*levels)
    assert [tuple(f.shape) for f in got] == [(2, 8, 6, 3), (2, 8, 6, 5), (2, 8, 6, 2)]
    np.testing.assert_array_equal(np.asarray(got[0]), levels[0])  # untouched
    np.testing.assert_array_equal(np.asarray(got[2]), levels[2])
    ref = resize(levels[1], (8, 6), method=method, channels_last=True)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref))


def test_align_levels_nearest_replicates_like_padims_embedding_concat(rng):
    # PaDiM's reference embedding_concat replicates each coarse cell over its
    # (2 x 2) block of the fine grid: nearest upsampling by an integer factor.
    coarse = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
    fine = np.zeros((1, 6, 8, 1), np.float32)
    _, got = align_levels([fine, coarse], method="nearest")
    np.testing.assert_array_equal(
        np.asarray(got), np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    )


def test_align_levels_gradient_float64(x64, rng):
    a = jnp.asarray(rng.standard_normal((1, 4, 4, 1)))
    b = jnp.asarray(rng.standard_normal((1, 2, 2, 2)))
    check_grads(
        lambda a, b: jnp.concatenate(align_levels([a, b]), axis=-1),
        (a, b),
        order=1,
        modes=("fwd", "rev"),
    )


def test_align_levels_bad_input():
    f = np.ones((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="align_levels: levels must hold at least"):
        align_levels([])
    with pytest.raises(TypeError, match="align_levels: levels must be a sequence"):
        align_levels(f)
    with pytest.raises(ValueError, match="align_levels: method must be one of"):
        align_levels([f], method="area")
    with pytest.raises(ValueError, match="align_levels: levels must share"):
        align_levels([f, np.ones((2, 2, 2, 2), np.float32)])
    with pytest.raises(TypeError, match=r"align_levels: levels\[1\] must have a float"):
        align_levels([f, f.astype(np.int32)])


def test_docstring_examples():
    failed, attempted = doctest.testmod(jad.ops.patches)
    assert attempted > 0 and failed == 0
