"""Tests of jad.ops.projections: the random projections of PatchCore's coreset.

References: scikit-learn's ``johnson_lindenstrauss_min_dim`` and
``SparseRandomProjection`` (same value set, density and sign balance), and torch's
``nn.Linear`` default initialisation (uniform in +-1/sqrt(D)) where torch is installed.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from sklearn.random_projection import (
    SparseRandomProjection,
    johnson_lindenstrauss_min_dim,
)

from jad.ops import (
    dense_random_projection,
    johnson_lindenstrauss_dim,
    sparse_random_projection,
)


@pytest.mark.parametrize("n", [2, 10, 1000, 54_321, 10**6])
@pytest.mark.parametrize("eps", [0.1, 0.5, 0.9])
def test_johnson_lindenstrauss_dim_matches_sklearn(n, eps):
    assert johnson_lindenstrauss_dim(n, eps=eps) == int(
        johnson_lindenstrauss_min_dim(n, eps=eps)
    )


def test_johnson_lindenstrauss_dim_default_eps_is_anomalibs():
    assert johnson_lindenstrauss_dim(5000) == int(
        johnson_lindenstrauss_min_dim(5000, eps=0.9)
    )


def test_sparse_projection_matches_sklearn_distribution():
    dim_in, dim_out = 400, 300
    ours = np.asarray(sparse_random_projection(jax.random.key(0), dim_in, dim_out))
    assert ours.shape == (dim_in, dim_out) and ours.dtype == np.float32
    sk = SparseRandomProjection(
        n_components=dim_out, density="auto", random_state=0
    ).fit(np.zeros((2, dim_in)))
    theirs = sk.components_.toarray().T  # (dim_in, dim_out), as ours
    density = sk.density_
    assert density == pytest.approx(1 / math.sqrt(dim_in))
    # Same value set: 0 and +-sqrt(1/density)/sqrt(n_components).
    value = math.sqrt(1 / density) / math.sqrt(dim_out)
    np.testing.assert_allclose(
        np.unique(np.abs(theirs[theirs != 0])), value, rtol=1e-12
    )
    np.testing.assert_allclose(np.unique(np.abs(ours[ours != 0])), value, rtol=1e-6)
    # Density and sign balance: binomial counts within 5 standard deviations.
    total = dim_in * dim_out
    nonzero = int(np.count_nonzero(ours))
    assert abs(nonzero - total * density) < 5 * math.sqrt(
        total * density * (1 - density)
    )
    positive = int(np.sum(ours > 0))
    assert abs(positive - nonzero / 2) < 5 * math.sqrt(nonzero / 4)
    # scikit-learn's own draw has the same statistics (sanity of the test itself).
    assert abs(np.count_nonzero(theirs) - total * density) < 5 * math.sqrt(
        total * density * (1 - density)
    )
    # Columns (output dimensions) are independent: no two identical columns.
    assert len({col.tobytes() for col in ours.T}) == dim_out


def test_dense_projection_is_torch_linear_init_distribution():
    dim_in, dim_out = 256, 128
    ours = np.asarray(dense_random_projection(jax.random.key(0), dim_in, dim_out))
    assert ours.shape == (dim_in, dim_out) and ours.dtype == np.float32
    bound = 1 / math.sqrt(dim_in)
    assert np.all(np.abs(ours) <= bound)
    # Uniform(-b, b): mean 0, variance b^2 / 3; 32768 draws, 5-sigma bands.
    n = ours.size
    assert abs(ours.mean()) < 5 * bound / math.sqrt(3 * n)
    assert ours.var() == pytest.approx(bound**2 / 3, rel=0.03)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    weight = torch.nn.Linear(dim_in, dim_out, bias=False).weight.detach().numpy()
    assert np.abs(weight).max() <= bound
    assert ours.var() == pytest.approx(weight.var(), rel=0.05)


def test_projections_are_seeded():
    a = dense_random_projection(jax.random.key(4), 10, 3)
    b = dense_random_projection(jax.random.key(4), 10, 3)
    c = dense_random_projection(jax.random.key(5), 10, 3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_projection_and_jl_bad_input():
    key = jax.random.key(0)
    for projection in (dense_random_projection, sparse_random_projection):
        with pytest.raises(ValueError, match="dim_in must be >= 1"):
            projection(key, 0, 4)
        with pytest.raises(ValueError, match="dim_out must be >= 1"):
            projection(key, 4, 0)
        with pytest.raises(TypeError, match="dim_out must be a Python int"):
            projection(key, 4, 2.5)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        johnson_lindenstrauss_dim(0)
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\)"):
        johnson_lindenstrauss_dim(100, eps=1.0)


@pytest.mark.parametrize(
    "projection", [dense_random_projection, sparse_random_projection]
)
def test_projection_jit_equals_nojit(projection):
    key = jax.random.key(6)
    jitted = jax.jit(projection, static_argnums=(1, 2))(key, 12, 5)
    plain = projection(key, 12, 5)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(plain))


def test_johnson_lindenstrauss_dim_bad_eps():
    for eps in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="eps must be in"):
            johnson_lindenstrauss_dim(10, eps=eps)
    with pytest.raises(TypeError, match="n_samples must be a Python int"):
        johnson_lindenstrauss_dim(10.0)
