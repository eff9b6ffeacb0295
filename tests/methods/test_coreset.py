"""Tests of jad.methods.coreset: greedy k-center coreset (PatchCore's bank reduction).

References: the plain numpy loops of the two public samplers in ``tests/references.py``
(official ``ApproximateGreedyCoresetSampler``, anomalib ``KCenterGreedy``), run on the
same projected points with the same explicit start indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import anomalib_greedy_np, official_greedy_np
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from jad.methods import coreset
from jad.methods.coreset import greedy_coreset
from jad.ops import dense_random_projection, sparse_random_projection


def _dist(points, index):
    return np.sqrt(np.sum((points - points[index]) ** 2, axis=-1))


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
