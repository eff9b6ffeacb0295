"""Tests of jad.coreset: greedy k-center coreset and the random projections.

References: plain numpy loops that read like the two public samplers
(``../shared/reference_implementations.md`` §5.1 official
``ApproximateGreedyCoresetSampler``, §5.1b anomalib ``KCenterGreedy``), run on the same
projected points with the same explicit start indices; scikit-learn's
``johnson_lindenstrauss_min_dim`` and ``SparseRandomProjection``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.random_projection import (
    SparseRandomProjection,
    johnson_lindenstrauss_min_dim,
)

from jad import coreset
from jad.coreset import (
    dense_random_projection,
    greedy_coreset,
    johnson_lindenstrauss_dim,
    sparse_random_projection,
)


def _dist(points, index):
    return np.sqrt(np.sum((points - points[index]) ** 2, axis=-1))


def official_greedy_np(points, n_select, starts):
    """ApproximateGreedyCoresetSampler: anchor = mean distance to the start points."""
    points = np.asarray(points, np.float64)
    anchor = np.mean(np.stack([_dist(points, s) for s in starts], axis=1), axis=1)
    selected = []
    for _ in range(n_select):
        idx = int(np.argmax(anchor))
        selected.append(idx)
        anchor = np.min(np.stack([anchor, _dist(points, idx)], axis=1), axis=1)
    return selected


def anomalib_greedy_np(points, n_select, first):
    """KCenterGreedy (first random point included): farthest from the selection."""
    points = np.asarray(points, np.float64)
    min_distances = None
    selected = []
    idx = int(first)
    for _ in range(n_select):
        d = _dist(points, idx)
        min_distances = d if min_distances is None else np.minimum(min_distances, d)
        selected.append(idx)
        min_distances[idx] = 0.0
        idx = int(np.argmax(min_distances))
    return selected


@pytest.fixture
def features(rng):
    return rng.standard_normal((150, 40)).astype(np.float32)


@pytest.mark.parametrize("n_select", [1, 17, 60])
def test_official_matches_numpy_loop_float64(features, n_select):
    starts = [3, 77, 12, 140, 5, 99, 0, 64, 31, 120]
    with jax.enable_x64(True):
        proj = np.asarray(
            dense_random_projection(jax.random.key(1), 40, 16), np.float64
        )
        points = features.astype(np.float64) @ proj
        got = greedy_coreset(points, n_select, starts=starts, variant="official")
        assert got.dtype == jnp.int32 and got.shape == (n_select,)
    np.testing.assert_array_equal(
        np.asarray(got), official_greedy_np(points, n_select, starts)
    )


@pytest.mark.parametrize("n_select", [1, 17, 60])
def test_anomalib_matches_numpy_loop_float64(features, n_select):
    with jax.enable_x64(True):
        dim_out = johnson_lindenstrauss_min_dim(150, eps=0.9)
        proj = np.asarray(
            sparse_random_projection(jax.random.key(2), 40, dim_out), np.float64
        )
        points = features.astype(np.float64) @ proj
        got = greedy_coreset(points, n_select, starts=42, variant="anomalib")
    ref = anomalib_greedy_np(points, n_select, 42)
    assert ref[0] == 42
    np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("variant", ["official", "anomalib"])
def test_float32_matches_numpy_loop(features, variant):
    # float32 greedy on float32 points vs the float64 loop on the same values: the
    # seeded points have no near ties, so the selection order is identical.
    proj = dense_random_projection(jax.random.key(3), 40, 128)
    points = np.asarray(jnp.asarray(features) @ proj)
    if variant == "official":
        starts = [10, 20, 30]
        ref = official_greedy_np(points, 40, starts)
    else:
        starts = 7
        ref = anomalib_greedy_np(points, 40, starts)
    got = greedy_coreset(points, 40, starts=starts, variant=variant)
    np.testing.assert_array_equal(np.asarray(got), ref)


def test_official_starts_are_not_selected_first(features):
    # The start points only define the initial anchor distance.
    starts = [0, 1, 2]
    got = np.asarray(greedy_coreset(features, 5, starts=starts))
    assert got[0] == np.argmax(
        np.mean([_dist(features.astype(np.float64), s) for s in starts], axis=0)
    )


@pytest.mark.parametrize("variant", ["official", "anomalib"])
def test_selecting_every_point_gives_a_permutation(rng, variant):
    points = rng.standard_normal((25, 4)).astype(np.float32)
    got = np.asarray(greedy_coreset(points, 25, key=jax.random.key(0), variant=variant))
    np.testing.assert_array_equal(np.sort(got), np.arange(25))


@pytest.mark.parametrize("variant", ["official", "anomalib"])
def test_random_start_is_seeded_and_distinct(features, variant):
    a = np.asarray(greedy_coreset(features, 30, key=jax.random.key(5), variant=variant))
    b = np.asarray(greedy_coreset(features, 30, key=jax.random.key(5), variant=variant))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 30


def test_anomalib_random_start_matches_loop_from_its_first_index(features):
    got = np.asarray(
        greedy_coreset(features, 20, key=jax.random.key(9), variant="anomalib")
    )
    np.testing.assert_array_equal(got, anomalib_greedy_np(features, 20, got[0]))


def test_num_starting_points_clipped_to_n(rng):
    points = rng.standard_normal((4, 3)).astype(np.float32)
    got = greedy_coreset(points, 2, key=jax.random.key(0), num_starting_points=10)
    assert got.shape == (2,)


@pytest.mark.parametrize("variant", ["official", "anomalib"])
def test_blocks_and_progress_do_not_change_the_selection(
    monkeypatch, features, variant, capsys
):
    # 60 picks in blocks of at most 7 (the first of 4, the rest as the timing
    # allows): the same indices as one loop.
    starts = [1, 2, 3] if variant == "official" else 5
    whole = greedy_coreset(features, 60, starts=starts, variant=variant)
    monkeypatch.setattr(coreset, "_MAX_BLOCK", 7)
    calls, estimates = [], []
    original = coreset._greedy_block
    monkeypatch.setattr(
        coreset,
        "_greedy_block",
        lambda p, d, count, size: calls.append((count, size))
        or original(p, d, count, size),
    )
    blocked = greedy_coreset(
        features, 60, starts=starts, variant=variant, progress=True,
        report=estimates.append,
    )
    assert calls[0] == (4, 7) and sum(c for c, _ in calls) == 60
    assert all(1 <= c <= 7 and size == 7 for c, size in calls) and len(calls) >= 9
    np.testing.assert_array_equal(np.asarray(blocked), np.asarray(whole))
    assert "coreset" in capsys.readouterr().err  # the tqdm bar
    (estimate,) = estimates
    assert (estimate.num_points, estimate.num_select) == (len(features), 60)
    assert estimate.seconds == pytest.approx(estimate.seconds_per_pick * 60)


def test_block_sizes_follow_the_measured_speed(monkeypatch, features):
    # With a tiny time budget per block every block after the first is one pick;
    # with a large one they grow 4x at a time up to the buffer size.
    calls = []
    original = coreset._greedy_block
    monkeypatch.setattr(
        coreset, "_greedy_block",
        lambda p, d, count, size: calls.append(count) or original(p, d, count, size),
    )
    monkeypatch.setattr(coreset, "_BLOCK_SECONDS", 1e-12)
    greedy_coreset(features, 12, starts=[1, 2, 3])
    assert calls == [4] + [1] * 8
    calls.clear()
    monkeypatch.setattr(coreset, "_BLOCK_SECONDS", 1e6)
    greedy_coreset(features, 100, starts=[1, 2, 3])
    assert calls == [4, 16, 64, 16]


def test_greedy_jit_equals_nojit(features):
    def f(p):
        return greedy_coreset(p, 12, starts=[1, 2, 3])

    np.testing.assert_array_equal(
        np.asarray(jax.jit(f)(features)), np.asarray(f(features))
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


def test_bad_input(features):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="n_select must be between 1 and 150"):
        greedy_coreset(features, 0, key=key)
    with pytest.raises(ValueError, match="n_select must be between 1 and 150"):
        greedy_coreset(features, 151, key=key)
    with pytest.raises(TypeError, match="n_select must be a Python int"):
        greedy_coreset(features, 2.0, key=key)
    with pytest.raises(
        ValueError, match="variant must be one of 'official', 'anomalib'"
    ):
        greedy_coreset(features, 2, key=key, variant="exact")
    with pytest.raises(ValueError, match="key or explicit starts"):
        greedy_coreset(features, 2)
    with pytest.raises(ValueError, match=r"points must be \(N, d\)"):
        greedy_coreset(features[0], 1, key=key)
    with pytest.raises(TypeError, match="points must have a floating dtype"):
        greedy_coreset(features.astype(np.int32), 2, key=key)
    with pytest.raises(ValueError, match=r"starts must be indices in \[0, 150\)"):
        greedy_coreset(features, 2, starts=[3, 150])
    with pytest.raises(ValueError, match=r"starts must be indices in \[0, 150\)"):
        greedy_coreset(features, 2, starts=-1, variant="anomalib")
    with pytest.raises(ValueError, match="starts must be one index"):
        greedy_coreset(features, 2, starts=[1, 2], variant="anomalib")
    with pytest.raises(ValueError, match="non-empty 1-D"):
        greedy_coreset(features, 2, starts=[])
    with pytest.raises(TypeError, match="starts must be integer"):
        greedy_coreset(features, 2, starts=[1.0])
    with pytest.raises(ValueError, match="num_starting_points"):
        greedy_coreset(features, 2, key=key, num_starting_points=0)


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
