"""Tests of jad.neighbors.nearest_neighbors (chunked exact k-NN).

Reference: scikit-learn's brute-force ``NearestNeighbors`` (Euclidean distances and
indices); squared distances are its distances squared. Points are Gaussian, so ties
have probability zero and the indices must agree exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loosen
from jax.test_util import check_grads
from sklearn.neighbors import NearestNeighbors

from jad.neighbors import nearest_neighbors


def _sklearn_knn(queries, bank, k):
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank)
    dist, idx = nn.kneighbors(queries.reshape(-1, queries.shape[-1]))
    batch = queries.shape[:-1]
    return dist.reshape(*batch, k), idx.reshape(*batch, k)


# (n_bank, n_queries, bank_chunk, query_chunk): bank smaller than, equal to and larger
# than a chunk, sizes that are no multiple of the chunks, single chunks.
_SIZES = [
    (7, 5, 4096, 1024),  # bank and queries smaller than their chunks
    (50, 33, 16, 8),  # neither size a multiple of its chunk
    (64, 32, 16, 8),  # exact multiples
    (23, 40, 23, 40),  # one chunk each, exactly
    (31, 9, 1, 1),  # one row per step
]


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize(("n_bank", "n_queries", "bank_chunk", "query_chunk"), _SIZES)
def test_matches_sklearn(rng, k, squared, n_bank, n_queries, bank_chunk, query_chunk):
    dim = 6
    bank = rng.standard_normal((n_bank, dim)).astype(np.float32)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    dist, idx = nearest_neighbors(
        queries,
        bank,
        k,
        squared=squared,
        bank_chunk=bank_chunk,
        query_chunk=query_chunk,
    )
    ref_dist, ref_idx = _sklearn_knn(queries, bank, k)
    assert dist.shape == (n_queries, k) and idx.shape == (n_queries, k)
    assert idx.dtype == jnp.int32 and dist.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    expected = ref_dist**2 if squared else ref_dist
    # float32 distances of O(1) values: 1e-5 relative
    np.testing.assert_allclose(np.asarray(dist), expected, rtol=loosen(1e-5), atol=1e-6)


def test_distances_sorted_ascending(rng):
    bank = rng.standard_normal((40, 5)).astype(np.float32)
    queries = rng.standard_normal((12, 5)).astype(np.float32)
    dist, _ = nearest_neighbors(queries, bank, 7, bank_chunk=6)
    assert np.all(np.diff(np.asarray(dist), axis=-1) >= 0)


def test_leading_batch_dims(rng):
    bank = rng.standard_normal((30, 4)).astype(np.float32)
    queries = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    dist, idx = nearest_neighbors(
        queries, bank, 3, squared=False, bank_chunk=7, query_chunk=4
    )
    ref_dist, ref_idx = _sklearn_knn(queries, bank, 3)
    assert dist.shape == (2, 3, 5, 3) and idx.shape == (2, 3, 5, 3)
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_allclose(np.asarray(dist), ref_dist, rtol=1e-5)


def test_single_query_vector(rng):
    bank = rng.standard_normal((10, 3)).astype(np.float32)
    query = rng.standard_normal(3).astype(np.float32)
    dist, idx = nearest_neighbors(query, bank, 2)
    ref_dist, ref_idx = _sklearn_knn(query[None], bank, 2)
    assert dist.shape == (2,) and idx.shape == (2,)
    np.testing.assert_array_equal(np.asarray(idx), ref_idx[0])
    np.testing.assert_allclose(np.asarray(dist), ref_dist[0] ** 2, rtol=1e-5)


def test_k_equals_bank_size_returns_every_row(rng):
    bank = rng.standard_normal((6, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    _, idx = nearest_neighbors(queries, bank, 6, bank_chunk=4)
    np.testing.assert_array_equal(
        np.sort(np.asarray(idx), axis=-1), np.tile(np.arange(6), (4, 1))
    )


def test_query_in_bank_has_zero_distance_and_finite_gradient(rng):
    bank = rng.standard_normal((9, 4)).astype(np.float32)
    queries = bank[[2, 5]]
    for squared in (True, False):
        dist, idx = nearest_neighbors(queries, bank, 1, squared=squared)
        np.testing.assert_array_equal(np.asarray(idx)[:, 0], [2, 5])
        np.testing.assert_allclose(np.asarray(dist), 0.0, atol=1e-6)
        grad = jax.grad(
            lambda q, s=squared: nearest_neighbors(q, bank, 1, squared=s)[0].sum()
        )(jnp.asarray(queries))
        assert np.all(np.isfinite(np.asarray(grad)))


def test_empty_queries():
    bank = np.ones((5, 3), np.float32)
    dist, idx = nearest_neighbors(np.zeros((2, 0, 3), np.float32), bank, 2)
    assert dist.shape == (2, 0, 2) and idx.shape == (2, 0, 2)


def test_duplicate_bank_rows_keep_lower_index_first():
    bank = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], np.float32)
    queries = np.array([[1.0, 0.1]], np.float32)
    _, idx = nearest_neighbors(queries, bank, 2, bank_chunk=1)
    np.testing.assert_array_equal(np.asarray(idx), [[0, 2]])


def test_float64_matches_sklearn(rng):
    with jax.enable_x64(True):
        bank = rng.standard_normal((25, 5))
        queries = rng.standard_normal((11, 5))
        dist, idx = nearest_neighbors(queries, bank, 3, squared=False, bank_chunk=8)
        assert dist.dtype == jnp.float64
        ref_dist, ref_idx = _sklearn_knn(queries, bank, 3)
        np.testing.assert_array_equal(np.asarray(idx), ref_idx)
        # float64: exact recomputation of the selected distances
        np.testing.assert_allclose(np.asarray(dist), ref_dist, rtol=1e-12)


@pytest.mark.parametrize("squared", [True, False])
def test_gradients_wrt_queries_and_bank(rng, squared):
    with jax.enable_x64(True):
        bank = jnp.asarray(rng.standard_normal((12, 3)))
        queries = jnp.asarray(rng.standard_normal((5, 3)))

        def f(q, b):
            dist, _ = nearest_neighbors(
                q, b, 2, squared=squared, bank_chunk=5, query_chunk=2
            )
            return dist

        # The selected neighbours are fixed under a 1e-4 step (Gaussian points are
        # far from ties), so the distances are smooth there.
        check_grads(
            f,
            (queries, bank),
            order=1,
            modes=("fwd", "rev"),
            eps=1e-4,
            atol=1e-6,
            rtol=1e-6,
        )


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["nojit", "jit"])
def test_jit_equals_nojit(rng, transform):
    bank = rng.standard_normal((20, 4)).astype(np.float32)
    queries = rng.standard_normal((3, 7, 4)).astype(np.float32)

    def f(q, b):
        return nearest_neighbors(q, b, 3, squared=False, bank_chunk=6, query_chunk=5)

    dist, idx = transform(f)(queries, bank)
    ref_dist, ref_idx = f(queries, bank)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(ref_dist), rtol=1e-6)


def test_disable_jit_equals_jit(rng):
    bank = rng.standard_normal((11, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    dist, idx = nearest_neighbors(queries, bank, 2, bank_chunk=4, query_chunk=3)
    with jax.disable_jit():
        dist2, idx2 = nearest_neighbors(queries, bank, 2, bank_chunk=4, query_chunk=3)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(idx2))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(dist2), rtol=1e-6)


def test_bad_input(rng):
    bank = rng.standard_normal((5, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="k must be between 1 and 5"):
        nearest_neighbors(queries, bank, 6)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(queries, bank, 0)
    with pytest.raises(TypeError, match="k must be a Python int"):
        nearest_neighbors(queries, bank, 1.0)
    with pytest.raises(ValueError, match="feature dimension"):
        nearest_neighbors(queries[:, :2], bank, 1)
    with pytest.raises(ValueError, match="bank must be"):
        nearest_neighbors(queries, bank[0], 1)
    with pytest.raises(ValueError, match="bank must be"):
        nearest_neighbors(queries, bank[None], 1)
    with pytest.raises(TypeError, match="queries must have a floating dtype"):
        nearest_neighbors(queries.astype(np.int32), bank, 1)
    with pytest.raises(TypeError, match="bank must have a floating dtype"):
        nearest_neighbors(queries, bank.astype(bool), 1)
    with pytest.raises(ValueError, match="queries must have at least 1 dim"):
        nearest_neighbors(np.float32(1.0), bank, 1)
    with pytest.raises(ValueError, match="bank_chunk"):
        nearest_neighbors(queries, bank, 1, bank_chunk=0)
    with pytest.raises(ValueError, match="query_chunk"):
        nearest_neighbors(queries, bank, 1, query_chunk=0)
