"""Tests of jad.methods.padim against the reference code's numpy/scipy operations.

References (xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master):
``random.seed(1024)`` +
``random.sample(range(t_d), d)`` for the channel subset, nearest replication of the
coarser levels (written with ``np.repeat``), ``np.mean`` and
``np.cov(rowvar=False) + 0.01 I`` per location, Mahalanobis distances with
``np.linalg.inv`` and ``scipy.spatial.distance.mahalanobis``.
"""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial.distance import mahalanobis

from jad.methods import PatchCoreConfig, padim, patchcore
from jad.methods.padim import PaDiMConfig


def _reference_sample(total, count, seed=1024):
    """The reference's lines, run on Python's global ``random`` (state restored)."""
    saved = random.getstate()
    try:
        random.seed(seed)
        return tuple(random.sample(range(total), count))
    finally:
        random.setstate(saved)


@pytest.mark.parametrize(("total", "count"), [(448, 100), (1792, 550)])
def test_channel_subset_matches_reference_random_sample(total, count):
    got = padim.channel_subset(total, None)
    assert got == _reference_sample(total, count)
    assert len(set(got)) == count and all(0 <= i < total for i in got)


def test_channel_subset_other_sizes_and_seeds():
    assert padim.channel_subset(176, None) == _reference_sample(176, 100)
    assert padim.channel_subset(40, None) == _reference_sample(40, 40)
    assert padim.channel_subset(448, 7, seed=3) == _reference_sample(448, 7, seed=3)
    with pytest.raises(ValueError, match="n_features must be between 1 and 10"):
        padim.channel_subset(10, 11)
    with pytest.raises(ValueError, match="n_features"):
        padim.channel_subset(10, 0)


def test_channel_subset_leaves_global_random_state_alone():
    random.seed(5)
    expected = random.random()
    random.seed(5)
    padim.channel_subset(448, None)
    assert random.random() == expected


# ------------------------------------------------------------------------- embed


@pytest.fixture
def features(rng):
    """Levels 1-3 at strides 4, 8, 16 of a 32x32 image: grids 8, 4, 2."""
    return {
        1: rng.standard_normal((3, 8, 8, 6)).astype(np.float32),
        2: rng.standard_normal((3, 4, 4, 8)).astype(np.float32),
        3: rng.standard_normal((3, 2, 2, 10)).astype(np.float32),
    }


def _concat_np(features):
    parts = [features[1]]
    for level, factor in ((2, 2), (3, 4)):
        f = np.repeat(np.repeat(features[level], factor, axis=1), factor, axis=2)
        parts.append(f)
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("n_features", [None, 9, 0])
def test_embed_is_nearest_concat_then_channel_subset(features, n_features):
    config = PaDiMConfig(n_features=n_features)
    got = np.asarray(padim.embed(config, features))
    concat = _concat_np(features)
    if n_features == 0:
        ref = concat
    else:
        ref = concat[..., list(_reference_sample(24, n_features or 24))]
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)  # copies only: exact


def test_embed_reference_default_sizes(rng):
    # ResNet-18 levels 1-3: 64 + 128 + 256 = 448 channels -> the reference's 100.
    feats = {
        1: rng.standard_normal((1, 4, 4, 64)).astype(np.float32),
        2: rng.standard_normal((1, 2, 2, 128)).astype(np.float32),
        3: rng.standard_normal((1, 1, 1, 256)).astype(np.float32),
    }
    got = np.asarray(padim.embed(PaDiMConfig(), feats))
    concat = np.concatenate(
        [
            feats[1],
            np.repeat(np.repeat(feats[2], 2, 1), 2, 2),
            np.broadcast_to(feats[3], (1, 4, 4, 256)),
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(got, concat[..., list(_reference_sample(448, 100))])


# --------------------------------------------------------------------------- fit


@pytest.fixture
def train(rng):
    return rng.standard_normal((12, 3, 4, 5)).astype(np.float32)


@pytest.fixture
def state(train):
    return padim.fit(PaDiMConfig(), train)


def test_fit_mean_and_cov_match_numpy(train, state):
    assert state.mean.shape == (3, 4, 5) and state.whitening.shape == (3, 4, 5, 5)
    np.testing.assert_allclose(
        np.asarray(state.mean), train.mean(axis=0), rtol=1e-5, atol=1e-6
    )
    whitening = np.asarray(state.whitening, np.float64)
    assert np.all(np.triu(whitening, 1) == 0)
    chol = np.linalg.inv(whitening)
    cov = chol @ np.swapaxes(chol, -1, -2)
    for i in range(3):
        for j in range(4):
            ref = np.cov(train[:, i, j].astype(np.float64), rowvar=False)
            ref += 0.01 * np.eye(5)
            # float32 moments of O(1) data: 1e-5
            np.testing.assert_allclose(cov[i, j], ref, rtol=1e-5, atol=1e-5)


def test_fit_in_blocks_equals_one_block(monkeypatch, train, state, capsys):
    # 5 x 5 float32 covariances are 100 bytes: 2 locations per block, 6 blocks
    # over the 12 locations, the last padded and trimmed.
    monkeypatch.setattr(padim, "_BLOCK_BYTES", 250)
    blocked = padim.fit(PaDiMConfig(), train[:, :, :3], progress=True)
    assert "padim: fit" in capsys.readouterr().err
    np.testing.assert_allclose(
        np.asarray(blocked.mean), np.asarray(state.mean[:, :3]), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(blocked.whitening),
        np.asarray(state.whitening[:, :3]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_fit_regularization_is_configurable(train):
    state = padim.fit(PaDiMConfig(regularization=0.5), train)
    chol = np.linalg.inv(np.asarray(state.whitening[1, 2], np.float64))
    ref = np.cov(train[:, 1, 2].astype(np.float64), rowvar=False) + 0.5 * np.eye(5)
    np.testing.assert_allclose(chol @ chol.T, ref, rtol=1e-5, atol=1e-5)


def test_fit_two_images_is_enough(train):
    state = padim.fit(PaDiMConfig(), train[:2])
    assert np.all(np.isfinite(np.asarray(state.whitening)))  # rank 1 + 0.01 I


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="regularization must be > 0"):
        PaDiMConfig(regularization=0.0)
    with pytest.raises(ValueError, match="upsample must be one of"):
        PaDiMConfig(upsample="area")
    with pytest.raises(ValueError, match="levels must not be empty"):
        PaDiMConfig(levels=())


def test_fit_bad_input(train):
    with pytest.raises(ValueError, match="at least 2 training images"):
        padim.fit(PaDiMConfig(), train[:1])
    with pytest.raises(ValueError, match="at least 2 training images"):
        padim.fit(PaDiMConfig(), train[:0])
    with pytest.raises(ValueError, match=r"embeddings must be \(N, h, w, d\)"):
        padim.fit(PaDiMConfig(), train[0])
    with pytest.raises(TypeError, match="floating"):
        padim.fit(PaDiMConfig(), train.astype(np.int64))
    with pytest.raises(ValueError, match="NaN"):
        padim.fit(PaDiMConfig(), np.where(train > 2, np.nan, train))
    with pytest.raises(TypeError, match="config must be a PaDiMConfig"):
        padim.fit(PatchCoreConfig(), train)


def test_score_bad_input(rng, state):
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 3, 4, 5\)"):
        padim.score(state, rng.standard_normal((2, 4, 3, 5)))
    with pytest.raises(ValueError, match="embeddings must be"):
        padim.score(state, rng.standard_normal((3, 4, 5)))
    bank = patchcore.PatchCoreState(jnp.zeros((4, 5)), PatchCoreConfig())
    with pytest.raises(TypeError, match="state must be a PaDiMState"):
        padim.score(bank, rng.standard_normal((2, 3, 4, 5)))


def test_config_validation():
    assert PaDiMConfig().levels == (1, 2, 3)
    assert PaDiMConfig(levels=[1, 2]).levels == (1, 2)
    with pytest.raises(ValueError, match="levels"):
        PaDiMConfig(levels=())
    with pytest.raises(ValueError, match="n_features"):
        PaDiMConfig(n_features=-1)
    with pytest.raises(TypeError, match="levels"):
        PaDiMConfig(levels="123")
    with pytest.raises(TypeError, match="regularization"):
        PaDiMConfig(regularization="0.01")
    with pytest.raises(TypeError, match="squared"):
        PaDiMConfig(squared=1)


# ------------------------------------------------------------------------- score


def _mahalanobis_np(train, test, squared, regularization=0.01):
    out = np.empty(test.shape[:-1])
    for i in range(train.shape[1]):
        for j in range(train.shape[2]):
            x = train[:, i, j].astype(np.float64)
            mean = x.mean(axis=0)
            cov = np.cov(x, rowvar=False) + regularization * np.eye(x.shape[-1])
            inv = np.linalg.inv(cov)
            for b in range(test.shape[0]):
                d = test[b, i, j] - mean
                out[b, i, j] = d @ inv @ d if squared else np.sqrt(d @ inv @ d)
    return out


@pytest.mark.parametrize("squared", [False, True])
def test_score_matches_explicit_inverse(rng, train, squared):
    state = padim.fit(PaDiMConfig(squared=squared), train)
    test = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = np.asarray(padim.score(state, test))
    assert got.shape == (2, 3, 4)
    # float32 triangular solve vs float64 inverse, distances O(1-10): 1e-4
    np.testing.assert_allclose(got, _mahalanobis_np(train, test, squared), rtol=1e-4)


def test_score_matches_scipy_mahalanobis(rng, train, state):
    test = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = np.asarray(padim.score(state, test))
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        x = train[:, i, j].astype(np.float64)
        inv = np.linalg.inv(np.cov(x, rowvar=False) + 0.01 * np.eye(5))
        ref = mahalanobis(test[b, i, j], x.mean(axis=0), inv)
        assert got[b, i, j] == pytest.approx(ref, rel=1e-4)


def test_score_of_the_mean_is_zero(state):
    got = np.asarray(padim.score(state, state.mean[None]))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)
    grad = jax.grad(lambda e: padim.score(state, e).sum())(state.mean[None])
    assert np.all(np.isfinite(np.asarray(grad)))


def test_score_jit_vmap_equal_nojit(rng, state):
    test = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    ref = np.asarray(padim.score(state, test))
    jitted = jax.jit(padim.score)(state, test)
    np.testing.assert_allclose(np.asarray(jitted), ref, rtol=1e-6)
    with jax.disable_jit():
        eager = padim.score(state, test)
    np.testing.assert_allclose(np.asarray(eager), ref, rtol=1e-6)
    vmapped = jax.vmap(lambda e: padim.score(state, e[None])[0])(test)
    np.testing.assert_allclose(np.asarray(vmapped), ref, rtol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_score_gradients_float64(rng, squared):
    train = rng.standard_normal((6, 2, 2, 3)).astype(np.float32)
    fitted = padim.fit(PaDiMConfig(squared=squared), train)
    with jax.enable_x64(True):
        # The fitted state's arrays in float64 (whatever fields it holds).
        state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), fitted)
        test = jnp.asarray(rng.standard_normal((1, 2, 2, 3)))
        got = padim.score(state, test)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(
            np.asarray(got),
            _mahalanobis_np(train, np.asarray(test), squared),
            rtol=1e-4,
        )  # the state was fitted in float32
        check_grads(
            lambda e: padim.score(state, e),
            (test,),
            order=1,
            modes=("fwd", "rev"),
            eps=1e-5,
            atol=1e-7,
            rtol=1e-7,
        )


def test_nan_embeddings_score_nan_never_zero(rng):
    # The old guard `where(sq > 0, sqrt(sq), 0)` turned NaN into the distance 0 of a
    # perfectly normal location.
    train = rng.standard_normal((6, 3, 4, 5)).astype(np.float32)
    state = padim.fit(PaDiMConfig(), train)
    test = jnp.asarray(train[:2]).at[0, 1, 2, 3].set(jnp.nan).at[1].set(jnp.inf)
    for fn in (padim.score, jax.jit(padim.score)):
        out = np.asarray(fn(state, test))
        assert np.isnan(out[0, 1, 2])
        assert np.isfinite(np.delete(out[0].ravel(), 6)).all()
        assert not np.isfinite(out[1]).any()
    # the distance of the mean itself is still 0 with a finite gradient
    mean = state.mean[None]
    assert float(padim.score(state, mean).max()) == 0.0
    grad = jax.grad(lambda e: padim.score(state, e).sum())(mean)
    assert np.isfinite(np.asarray(grad)).all()


def test_fit_with_overflowing_covariance_raises(rng):
    train = (rng.standard_normal((6, 2, 2, 5)) * 1e20).astype(np.float32)
    assert np.isfinite(train).all()
    with pytest.raises(ValueError, match="padim.fit: the fitted Gaussians are not"):
        padim.fit(PaDiMConfig(), train)


def test_embed_without_a_level_names_it(rng):
    features = {1: jnp.zeros((1, 8, 8, 4)), 2: jnp.zeros((1, 4, 4, 4))}
    with pytest.raises(ValueError, match=r"padim.embed: features lack level\(s\) 3"):
        padim.embed(PaDiMConfig(), features)


# ------------------------------------------------------------- streaming fit


def _sigma(state):
    """The fitted covariances Sigma = inv(W) inv(W)^T, float64."""
    chol = np.linalg.inv(np.asarray(state.whitening, np.float64))
    return chol @ np.swapaxes(chol, -1, -2)


def _np_cov(train, regularization=0.01):
    """np.cov per location in float64 plus regularization I: (h, w, d, d)."""
    n, h, w, d = train.shape
    out = np.empty((h, w, d, d))
    for i in range(h):
        for j in range(w):
            out[i, j] = np.cov(train[:, i, j].astype(np.float64), rowvar=False)
    return out + regularization * np.eye(d)


def _split(x, sizes):
    """``x`` cut into consecutive batches of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


BATCHINGS = {
    "one batch": [12],
    "batches of 1": [1] * 12,
    "uneven": [5, 1, 0, 4, 2],  # with an empty batch, which is skipped
}


@pytest.mark.parametrize("block_bytes", [None, 250])
@pytest.mark.parametrize("batching", list(BATCHINGS))
def test_fit_batches_matches_numpy_cov_for_any_batching(
    monkeypatch, train, batching, block_bytes
):
    if block_bytes is not None:  # 2 locations per block, the last one overlapping
        monkeypatch.setattr(padim, "_BLOCK_BYTES", block_bytes)
    batches = [jnp.asarray(b) for b in _split(train, BATCHINGS[batching])]
    state = padim.fit_batches(PaDiMConfig(), iter(batches))
    assert state.mean.shape == (3, 4, 5) and state.whitening.shape == (3, 4, 5, 5)
    assert not any(b.is_deleted() for b in batches)  # only the accumulators donated
    # float32 moments of O(1) data: 1e-5, as fit
    np.testing.assert_allclose(
        np.asarray(state.mean), train.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(_sigma(state), _np_cov(train), rtol=1e-5, atol=1e-5)
    assert np.all(np.triu(np.asarray(state.whitening), 1) == 0)


def test_fit_is_fit_batches_of_one_batch(train, state):
    streamed = padim.fit_batches(PaDiMConfig(), [train])
    np.testing.assert_array_equal(np.asarray(streamed.mean), np.asarray(state.mean))
    np.testing.assert_array_equal(
        np.asarray(streamed.whitening), np.asarray(state.whitening)
    )


def test_fit_batches_keeps_float32_accuracy_under_a_large_offset(rng):
    # Embeddings 1e3 + 0.1 noise: float32 holds them to ~6e-5, 6e-4 of the noise.
    # The naive sum x x^T - N mean mean^T works on values ~1e6 whose float32 ulp
    # (0.06) is 6x the variance (0.01); the centred pairwise merge stays at float32
    # accuracy relative to the noise.
    train = (1e3 + 0.1 * rng.standard_normal((40, 2, 3, 4))).astype(np.float32)
    ref = _np_cov(train, regularization=0.0)  # float64 of the same float32 values
    config = PaDiMConfig(regularization=1e-6)
    for sizes in ([40], [1] * 40, [7, 13, 1, 19]):
        state = padim.fit_batches(config, iter(_split(train, sizes)))
        np.testing.assert_allclose(
            np.asarray(state.mean), train.astype(np.float64).mean(0), rtol=0, atol=2e-4
        )  # float32 ulp of 1e3 is 6e-5
        got = _sigma(state) - 1e-6 * np.eye(4)
        # 1e-3 of the variance 0.01: the float32 rounding of the inputs themselves
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # The same data defeat the naive float32 formula (so the case is a real test).
    x = train.reshape(40, 6, 4)
    naive = (np.einsum("nli,nlj->lij", x, x) - 40 * np.einsum(
        "li,lj->lij", x.mean(0), x.mean(0))) / 39
    assert np.abs(naive - ref.reshape(6, 4, 4)).max() > 1e-2


def test_fit_batches_bad_input(train):
    config = PaDiMConfig()
    with pytest.raises(TypeError, match="fit_batches: config must be a PaDiMConfig"):
        padim.fit_batches(PatchCoreConfig(), [train])
    with pytest.raises(TypeError, match="fit_batches: batch 1 must have a floating"):
        padim.fit_batches(config, [train[:2], train[2:4].astype(np.int32)])
    with pytest.raises(ValueError, match=r"batch 1 must be \(B, h, w, d\)"):
        padim.fit_batches(config, [train[:2], train[2]])
    with pytest.raises(ValueError, match=r"batch 2 must be \(B, 3, 4, 5\) like the"):
        padim.fit_batches(config, [train[:2], train[2:4], train[4:6, :, :3]])
    with pytest.raises(ValueError, match=r"batch 1 must be \(B, 3, 4, 5\)"):
        padim.fit_batches(config, [train[:2], train[2:4, ..., :4]])
    bad = train[2:4].copy()
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(ValueError, match="fit_batches: batch 1 contains NaN or inf"):
        padim.fit_batches(config, [train[:2], bad])
    with pytest.raises(ValueError, match="at least 2 training images.*got 1"):
        padim.fit_batches(config, [train[:1], train[1:1]])
    with pytest.raises(ValueError, match="at least 2 training images.*got 0"):
        padim.fit_batches(config, iter([]))
    with pytest.raises(ValueError, match="at least 2 training images.*got 1"):
        padim.fit(config, train[:1])


def test_fit_batches_with_overflowing_covariance_raises(rng):
    train = (rng.standard_normal((6, 2, 2, 5)) * 1e20).astype(np.float32)
    with pytest.raises(ValueError, match="fit_batches: the fitted Gaussians") as err:
        padim.fit_batches(PaDiMConfig(), [train[:3], train[3:]])
    # the largest embedding of all batches, for the message
    assert f"as large as {np.abs(train).max():.3g} overflows" in str(err.value)


def test_fit_batches_progress_and_interrupt(train, capsys):
    padim.fit_batches(PaDiMConfig(), [train[:6], train[6:]], progress=True)
    assert "padim: fit" in capsys.readouterr().err

    def interrupted():
        yield train[:6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        padim.fit_batches(PaDiMConfig(), interrupted())


def test_fit_batches_memory_does_not_grow_with_the_number_of_batches(rng):
    # Live device memory while batches stream in: the accumulators plus a batch or
    # two in flight, never the batches seen so far (30 batches are 15x the
    # (2, 4, 4, 16) accumulator... held, they would show).
    batch = rng.standard_normal((4, 2, 4, 16)).astype(np.float32)
    live = []

    def batches():
        for i in range(30):
            live.append(sum(a.nbytes for a in jax.live_arrays()))
            yield batch + np.float32(i)

    before = sum(a.nbytes for a in jax.live_arrays())
    padim.fit_batches(PaDiMConfig(), batches())
    grown = np.array(live[2:]) - before
    state_bytes = 8 * 16 * 16 * 4 + 8 * 16 * 4
    assert grown.max() <= state_bytes + 4 * batch.nbytes, grown


# ------------------------------------------------------------- input validation


def test_fit_refuses_embeddings_without_channels_or_locations(train):
    for shape in ((3, 2, 2, 0), (3, 0, 2, 5), (3, 2, 0, 5)):
        empty = np.ones(shape, np.float32)
        with pytest.raises(ValueError, match="padim.fit: embeddings must have h, w, d"):
            padim.fit(PaDiMConfig(), empty)  # was a ZeroDivisionError
        with pytest.raises(ValueError, match="fit_batches: batch 0 must have h, w, d"):
            padim.fit_batches(PaDiMConfig(), [empty])
    with pytest.raises(ValueError, match="fit_batches: batch 1 must have h, w, d"):
        padim.fit_batches(PaDiMConfig(), [train[:2], train[2:4, ..., :0]])


def test_score_refuses_non_float_embeddings(state):
    for dtype in (bool, np.int32):
        with pytest.raises(TypeError, match="padim.score: embeddings must have a flo"):
            padim.score(state, np.ones((2, 3, 4, 5), dtype))


def test_channel_subset_checks_its_ints():
    for args, name in ((("7", None), "total"), ((7.0, 3), "total"),
                       ((7, 3.0), "n_features"), ((7, True), "n_features")):
        with pytest.raises(TypeError, match=f"channel_subset: {name} must be a Python"):
            padim.channel_subset(*args)
    with pytest.raises(TypeError, match="channel_subset: seed must be a Python int"):
        padim.channel_subset(7, 3, seed=1.5)
    for total in (0, -1):
        with pytest.raises(ValueError, match="channel_subset: total must be >= 1"):
            padim.channel_subset(total, None)
    assert padim.channel_subset(np.int64(7), np.int64(3)) == _reference_sample(7, 3)


def test_embed_checks_every_level_and_embeds_an_empty_batch(features):
    config = PaDiMConfig(n_features=5)
    with pytest.raises(TypeError, match=r"padim.embed: features\[1\] must have a flo"):
        padim.embed(config, {**features, 1: features[1].astype(np.int32)})
    with pytest.raises(ValueError, match=r"features\[1\] has B = 3, features\[3\] has"):
        padim.embed(config, {**features, 3: features[3][:2]})
    with pytest.raises(ValueError, match=r"features\[2\] must be \(B, h, w, C\)"):
        padim.embed(config, {**features, 2: features[2][0]})
    empty = padim.embed(config, {k: v[:0] for k, v in features.items()})
    assert empty.shape == (0, 8, 8, 5) and empty.dtype == jnp.float32


def test_fit_tells_an_ill_conditioned_covariance_from_an_overflow(rng):
    # Three images of O(1e4) values in 5 dimensions: Sigma (entries ~1e8, rank 2)
    # + 0.01 I is finite but its condition number (~1e10) is beyond float32's
    # Cholesky. A larger regularization fits; 1e20 values overflow.
    train = (rng.standard_normal((3, 2, 2, 5)) * 1e4).astype(np.float32)
    for fit in (lambda c, x: padim.fit(c, x),
                lambda c, x: padim.fit_batches(c, [x[:2], x[2:]])):
        with pytest.raises(ValueError, match="too ill-conditioned for float32") as err:
            fit(PaDiMConfig(), train)
        assert "overflows" not in str(err.value)
        assert "regularization" in str(err.value)
        state = fit(PaDiMConfig(regularization=1e4), train)
        assert np.isfinite(np.asarray(state.whitening)).all()
        with pytest.raises(ValueError, match="overflows float32") as err:
            fit(PaDiMConfig(), train * np.float32(1e16))
        assert "ill-conditioned" not in str(err.value)
