"""Tests of jad.ops.neighbors.nearest_neighbors (chunked exact k-NN).

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

from jad.ops import nearest_neighbors


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


def test_non_finite_concrete_inputs_are_refused(rng):
    bank = rng.standard_normal((5, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    for value in (np.nan, np.inf):
        bad = bank.copy()
        bad[2, 1] = value
        with pytest.raises(ValueError, match="bank contains NaN or inf"):
            nearest_neighbors(queries, bad, 1)
        bad = queries.copy()
        bad[0, 0] = value
        with pytest.raises(ValueError, match="queries contains NaN or inf"):
            nearest_neighbors(bad, bank, 1)


def test_nan_propagates_under_jit(rng):
    # Traced values cannot be checked: a NaN bank row must not be skipped (it was,
    # and queries then got finite distances), and a NaN query gets NaN distances to
    # k distinct rows (it got k copies of row 0).
    bank = rng.standard_normal((5, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    search = jax.jit(lambda q, b: nearest_neighbors(q, b, 2, bank_chunk=2))
    bad_bank = bank.copy()
    bad_bank[3, 1] = np.nan
    dist, idx = search(queries, bad_bank)
    assert np.all(np.isnan(np.asarray(dist)[:, 0]))
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], 3)
    bad_queries = queries.copy()
    bad_queries[1, 2] = np.nan
    dist, idx = search(bad_queries, bank)
    assert np.all(np.isnan(np.asarray(dist)[1]))
    assert np.all(np.isfinite(np.asarray(dist)[[0, 2, 3]]))
    assert len(set(np.asarray(idx)[1].tolist())) == 2


def test_inf_bank_row_under_jit_is_farthest(rng):
    bank = rng.standard_normal((5, 3)).astype(np.float32)
    bank[0, 0] = np.inf
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    dist, idx = jax.jit(lambda q, b: nearest_neighbors(q, b, 5))(queries, bank)
    np.testing.assert_array_equal(np.asarray(idx)[:, -1], 0)
    assert np.all(np.isinf(np.asarray(dist)[:, -1]))
    assert np.all(np.isfinite(np.asarray(dist)[:, :-1]))


def test_empty_bank_and_zero_feature_dimension():
    with pytest.raises(ValueError, match="bank must hold at least one row"):
        nearest_neighbors(np.ones((2, 3), np.float32), np.ones((0, 3), np.float32), 1)
    # D = 0: every distance is 0; ties keep the lower index first.
    dist, idx = nearest_neighbors(
        np.ones((3, 0), np.float32), np.ones((2, 0), np.float32), 2
    )
    np.testing.assert_array_equal(np.asarray(dist), np.zeros((3, 2)))
    np.testing.assert_array_equal(np.asarray(idx), np.tile([0, 1], (3, 1)))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_inputs_rank_in_float32(dtype):
    # Around 100 a float16 ulp is 0.06 and |q|^2 ~ 2e4 rounds to 16: the expansion
    # q^2 - 2qm + m^2 computed in float16 cannot tell 0 from 0.25.
    bank = np.array([[100.0, 100.0], [100.5, 100.0], [101.0, 100.0]]).astype(dtype)
    queries = np.array([[100.5, 100.0], [100.0, 100.0]]).astype(dtype)
    dist, idx = nearest_neighbors(queries, bank, 1, squared=False)
    assert dist.dtype == dtype
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], [1, 0])
    # The plain distance of an exact match is exactly 0 (it was sqrt(tiny) = 0.008
    # in float16), with a zero gradient.
    np.testing.assert_array_equal(np.asarray(dist, np.float32), 0.0)


def test_docstring_example():
    import doctest

    import jad.ops.neighbors

    failed, attempted = doctest.testmod(jad.ops.neighbors)
    assert attempted > 0 and failed == 0
