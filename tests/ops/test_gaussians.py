"""Tests of jad.ops.gaussians: Cholesky whitening and the Mahalanobis distance.

References: ``scipy.spatial.distance.mahalanobis`` (with the inverse covariance),
the linear-solve loop of ``tests/references.py`` and numpy's Cholesky.
"""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from references import mahalanobis_np
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

import jad.ops.gaussians
from jad.ops import WhiteningResult, cholesky_whitening, mahalanobis

TRANSFORMS = [lambda f: f, jax.jit]


def _covariances(rng, shape, d):
    a = rng.standard_normal((*shape, d, d))
    return a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(d)  # SPD, condition ~ 10..100


# -------------------------------------------------------------- cholesky_whitening


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cholesky_whitening_inverts_the_factor_float64(x64, rng, transform):
    cov = _covariances(rng, (2, 3), 4)
    out = transform(cholesky_whitening)(cov)
    assert isinstance(out, WhiteningResult) and out.whitening.dtype == jnp.float64
    chol = np.linalg.cholesky(cov)
    np.testing.assert_allclose(np.asarray(out.cholesky), chol, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(out.whitening), np.linalg.inv(chol), rtol=1e-9, atol=1e-10
    )
    w = np.asarray(out.whitening)
    assert np.all(np.triu(w, 1) == 0)  # lower triangular
    # W Sigma W^T = I: W whitens the Gaussian.
    np.testing.assert_allclose(
        w @ cov @ np.swapaxes(w, -1, -2),
        np.broadcast_to(np.eye(4), cov.shape),
        atol=1e-10,
    )


def test_cholesky_whitening_not_positive_definite_gives_nan():
    out = cholesky_whitening(np.array([[1.0, 2.0], [2.0, 1.0]], np.float32))
    assert not np.all(np.isfinite(np.asarray(out.cholesky)))
    assert not np.all(np.isfinite(np.asarray(out.whitening)))


def test_cholesky_whitening_gradient_float64(x64, rng):
    cov = jnp.asarray(_covariances(rng, (), 3))

    def f(cov):
        sym = (cov + cov.T) / 2  # the gradient w.r.t. a symmetric input
        return cholesky_whitening(sym).whitening

    check_grads(f, (cov,), order=1, modes=("fwd", "rev"))


def test_cholesky_whitening_bad_input():
    with pytest.raises(
        ValueError,
        match=r"cholesky_whitening: covariance must be "
        r"\(\.\.\., d, d\)",
    ):
        cholesky_whitening(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="covariance must be"):
        cholesky_whitening(np.ones((0, 0), np.float32))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cholesky_whitening(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="covariance must have a floating dtype"):
        cholesky_whitening(np.eye(2, dtype=np.int32))


# ---------------------------------------------------------------------- mahalanobis


def test_mahalanobis_matches_scipy_float64(x64, rng):
    cov = _covariances(rng, (3,), 5)
    mean = rng.standard_normal((3, 5))
    x = rng.standard_normal((4, 3, 5))
    w = cholesky_whitening(cov).whitening
    got = np.asarray(mahalanobis(w, mean, x))
    assert got.shape == (4, 3)
    for b in range(4):
        for i in range(3):
            ref = scipy_mahalanobis(x[b, i], mean[i], np.linalg.inv(cov[i]))
            assert got[b, i] == pytest.approx(ref, rel=1e-10)
            assert got[b, i] == pytest.approx(
                mahalanobis_np(cov[i], mean[i], x[b, i]), rel=1e-10
            )
    sq = np.asarray(mahalanobis(w, mean, x, squared=True))
    np.testing.assert_allclose(sq, got**2, rtol=1e-12)


def test_mahalanobis_float32_matches_float64_reference(rng):
    cov = _covariances(rng, (2, 2), 6)
    mean = rng.standard_normal((2, 2, 6))
    x = rng.standard_normal((3, 2, 2, 6))
    w = np.linalg.inv(np.linalg.cholesky(cov)).astype(np.float32)
    got = mahalanobis(w, mean.astype(np.float32), x.astype(np.float32))
    assert got.dtype == jnp.float32
    ref = [
        [
            [mahalanobis_np(cov[i, j], mean[i, j], x[b, i, j]) for j in range(2)]
            for i in range(2)
        ]
        for b in range(3)
    ]
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)  # float32


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("squared", [False, True])
def test_mahalanobis_jit_equals_nojit(rng, transform, squared):
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    mean = rng.standard_normal((4, 3)).astype(np.float32)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    got = transform(lambda w, m, x: mahalanobis(w, m, x, squared=squared))(w, mean, x)
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(mahalanobis(w, mean, x, squared=squared))
    )


def test_mahalanobis_broadcasts_any_leading_axes(rng):
    # One Gaussian for every point, a Gaussian per point, points per Gaussian.
    w = rng.standard_normal((3, 3)).astype(np.float32)
    mean = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    got = mahalanobis(w, mean, x, squared=True)
    assert got.shape == (2, 5)
    ref = np.sum((np.einsum("ij,...j->...i", w, x - mean)) ** 2, axis=-1)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    many = np.broadcast_to(w, (2, 5, 3, 3))
    np.testing.assert_allclose(
        np.asarray(mahalanobis(many, mean, x, squared=True)),
        np.asarray(got),
        rtol=1e-6,
    )


def test_mahalanobis_vmap_equals_loop(rng):
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    mean = rng.standard_normal((4, 3)).astype(np.float32)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    got = jax.vmap(mahalanobis)(w, mean, x)
    loop = [float(mahalanobis(w[i], mean[i], x[i])) for i in range(4)]
    np.testing.assert_allclose(np.asarray(got), loop, rtol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_mahalanobis_gradient_float64(x64, rng, squared):
    w = jnp.asarray(np.tril(rng.standard_normal((2, 3, 3))))
    mean = jnp.asarray(rng.standard_normal((2, 3)))
    x = jnp.asarray(rng.standard_normal((2, 3)))
    check_grads(
        lambda w, m, x: mahalanobis(w, m, x, squared=squared),
        (w, mean, x),
        order=2,
        modes=("fwd", "rev"),
    )


def test_mahalanobis_at_the_mean_is_zero_with_zero_gradient():
    w = jnp.eye(3)
    mean = jnp.array([1.0, 2.0, 3.0])
    value, grad = jax.value_and_grad(lambda x: mahalanobis(w, mean, x))(mean)
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_mahalanobis_nan_propagates():
    w = jnp.eye(2)
    out = mahalanobis(w, jnp.zeros(2), jnp.array([[jnp.nan, 0.0], [0.0, 0.0]]))
    assert np.isnan(out[0]) and out[1] == 0.0  # NaN never becomes a normal 0


def test_mahalanobis_bad_input():
    w, m, x = (
        np.eye(3, dtype=np.float32),
        np.zeros(3, np.float32),
        np.ones((2, 3), np.float32),
    )
    with pytest.raises(ValueError, match=r"mahalanobis: whitening must be"):
        mahalanobis(np.ones((3, 2), np.float32), m, x)
    with pytest.raises(ValueError, match=r"mahalanobis: mean must be \(\.\.\., 3\)"):
        mahalanobis(w, np.zeros(2, np.float32), x)
    with pytest.raises(ValueError, match=r"mahalanobis: x must be \(\.\.\., 3\)"):
        mahalanobis(w, m, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="do not broadcast"):
        mahalanobis(np.broadcast_to(w, (4, 3, 3)), m, x)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        mahalanobis(w, m, x.astype(np.int32))
    with pytest.raises(TypeError, match="squared must be a bool"):
        mahalanobis(w, m, x, squared=1)


def test_docstring_examples():
    failed, attempted = doctest.testmod(jad.ops.gaussians)
    assert attempted > 0 and failed == 0
