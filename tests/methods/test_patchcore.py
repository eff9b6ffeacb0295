"""Tests of jad.methods.patchcore (both presets) against independent references.

References:
- embedding, ``"official"``: a PyTorch transcription of amazon-science/patchcore-
  inspection (``PatchMaker.patchify``, ``PatchCore._embed``, ``MeanMapper``,
  ``Preprocessing``, ``Aggregator``): ``Unfold(3, padding=1)`` patches, the deeper
  level's patches bilinearly resized to the first level's grid *before* pooling,
  per-level ``adaptive_avg_pool1d`` then stacking and a final ``adaptive_avg_pool1d``;
- embedding, ``"anomalib"``: ``AvgPool2d(3, 1, 1)``, bilinear ``F.interpolate``, concat;
- coreset: the plain numpy greedy loop of ``tests/references.py`` (see also
  ``tests/methods/test_coreset.py``);
- scores: scikit-learn ``NearestNeighbors`` and numpy formulas (anomalib's re-weighting,
  F2PAD eq. 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loosen
from jax.test_util import check_grads
from references import official_greedy_np
from sklearn.neighbors import NearestNeighbors

from jad.methods import PaDiMConfig, padim, patchcore
from jad.methods.patchcore import PatchCoreConfig, PatchCoreState

# ----------------------------------------------------------------- torch references


def _nchw(torch, f):
    return torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2))).double()


def torch_official_embed(feature_list, pretrain_dim, target_dim, patchsize=3):
    """patchcore-inspection's embedding, transcribed literally (float64)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    features = [_nchw(torch, f) for f in feature_list]

    def patchify(features):  # PatchMaker.patchify(return_spatial_info=True)
        padding = int((patchsize - 1) / 2)
        unfolder = torch.nn.Unfold(
            kernel_size=patchsize, stride=1, padding=padding, dilation=1
        )
        unfolded_features = unfolder(features)
        number_of_total_patches = []
        for s in features.shape[-2:]:
            n_patches = (s + 2 * padding - 1 * (patchsize - 1) - 1) / 1 + 1
            number_of_total_patches.append(int(n_patches))
        unfolded_features = unfolded_features.reshape(
            *features.shape[:2], patchsize, patchsize, -1
        )
        unfolded_features = unfolded_features.permute(0, 4, 1, 2, 3)
        return unfolded_features, number_of_total_patches

    # PatchCore._embed
    features = [patchify(x) for x in features]
    patch_shapes = [x[1] for x in features]
    features = [x[0] for x in features]
    ref_num_patches = patch_shapes[0]
    for i in range(1, len(features)):
        _features = features[i]
        patch_dims = patch_shapes[i]
        _features = _features.reshape(
            _features.shape[0], patch_dims[0], patch_dims[1], *_features.shape[2:]
        )
        _features = _features.permute(0, -3, -2, -1, 1, 2)
        perm_base_shape = _features.shape
        _features = _features.reshape(-1, *_features.shape[-2:])
        _features = F.interpolate(
            _features.unsqueeze(1),
            size=(ref_num_patches[0], ref_num_patches[1]),
            mode="bilinear",
            align_corners=False,
        )
        _features = _features.squeeze(1)
        _features = _features.reshape(
            *perm_base_shape[:-2], ref_num_patches[0], ref_num_patches[1]
        )
        _features = _features.permute(0, -2, -1, 1, 2, 3)
        _features = _features.reshape(len(_features), -1, *_features.shape[-3:])
        features[i] = _features
    features = [x.reshape(-1, *x.shape[-3:]) for x in features]
    # Preprocessing: one MeanMapper per level, stacked on dim 1
    mapped = []
    for feature in features:
        feature = feature.reshape(len(feature), 1, -1)
        mapped.append(F.adaptive_avg_pool1d(feature, pretrain_dim).squeeze(1))
    features = torch.stack(mapped, dim=1)
    # Aggregator
    features = features.reshape(len(features), 1, -1)
    features = F.adaptive_avg_pool1d(features, target_dim)
    features = features.reshape(len(features), -1)
    batch = feature_list[0].shape[0]
    return features.numpy().reshape(batch, *ref_num_patches, target_dim)


def torch_anomalib_embed(feature_list):
    """anomalib's PatchcoreModel: AvgPool2d(3, 1, 1), bilinear, concatenation."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pool = torch.nn.AvgPool2d(3, 1, 1)
    features = [pool(_nchw(torch, f)) for f in feature_list]
    embeddings = features[0]
    for layer_embedding in features[1:]:
        layer_embedding = F.interpolate(
            layer_embedding, size=embeddings.shape[-2:], mode="bilinear"
        )
        embeddings = torch.cat((embeddings, layer_embedding), 1)
    return embeddings.permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------- embedding

# (channels, grids): small (C*9 < 1024, the pool repeats entries), C*9 > 1024, odd
# grids (non-integer bilinear ratio), WRN-50's 512/1024 on a tiny grid.
_EMBED_CASES = [
    ((16, 24), ((8, 8), (4, 4))),
    ((130, 150), ((6, 6), (3, 3))),
    ((16, 24), ((7, 5), (4, 3))),
    ((512, 1024), ((4, 4), (2, 2))),
]


@pytest.mark.parametrize(("channels", "grids"), _EMBED_CASES)
def test_official_embed_matches_torch_reference(rng, channels, grids):
    feats = [
        rng.standard_normal((2, *g, c)).astype(np.float32)
        for c, g in zip(channels, grids, strict=True)
    ]
    config = PatchCoreConfig()
    got = patchcore.embed(config, {2: feats[0], 3: feats[1]})
    ref = torch_official_embed(feats, 1024, 1024)
    assert got.shape == (2, *grids[0], 1024)
    # float32 vs a float64 reference of O(1) sums: 1e-5
    np.testing.assert_allclose(
        np.asarray(got), ref, rtol=loosen(1e-5), atol=loosen(1e-5)
    )


def test_official_embed_other_dims_and_three_levels(rng):
    grids, channels = ((8, 8), (4, 4), (2, 2)), (5, 7, 11)
    feats = [
        rng.standard_normal((1, *g, c)).astype(np.float32)
        for c, g in zip(channels, grids, strict=True)
    ]
    config = PatchCoreConfig(levels=(1, 2, 3), pretrain_dim=37, target_dim=23)
    got = patchcore.embed(config, dict(zip((1, 2, 3), feats, strict=True)))
    ref = torch_official_embed(feats, 37, 23)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_official_embed_wrn_closed_form(rng):
    # reference_implementations.md §5.1: for 512/1024 -> 1024, dims 0-511 are the
    # layer-2 channel filtered by [[.1,.1,.1],[.1,.2,.1],[.1,.1,.1]] (zero padding).
    f2 = rng.standard_normal((1, 4, 4, 512)).astype(np.float32)
    f3 = rng.standard_normal((1, 2, 2, 1024)).astype(np.float32)
    got = np.asarray(patchcore.embed(PatchCoreConfig(), {2: f2, 3: f3}))
    kernel = np.full((3, 3), 0.1)
    kernel[1, 1] = 0.2
    padded = np.pad(f2[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    ref = sum(
        kernel[i, j] * padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)
    )
    np.testing.assert_allclose(got[0, ..., :512], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("channels", "grids"), _EMBED_CASES[:3])
def test_anomalib_embed_matches_torch_reference(rng, channels, grids):
    feats = [
        rng.standard_normal((2, *g, c)).astype(np.float32)
        for c, g in zip(channels, grids, strict=True)
    ]
    got = patchcore.embed(PatchCoreConfig.anomalib(), {2: feats[0], 3: feats[1]})
    ref = torch_anomalib_embed(feats)
    assert got.shape == (2, *grids[0], sum(channels))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- fit


@pytest.fixture
def train_embeddings(rng):
    return rng.standard_normal((3, 5, 4, 16)).astype(np.float32)  # N h w = 60 patches


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_fit_ratio_one_keeps_every_patch(train_embeddings, preset):
    config = PatchCoreConfig(preset=preset, coreset_ratio=1.0)
    state = patchcore.fit(config, train_embeddings, key=jax.random.key(0))
    np.testing.assert_array_equal(
        np.asarray(state.memory_bank), train_embeddings.reshape(-1, 16)
    )


def _rows_in(rows, table):
    return [int(np.flatnonzero(np.all(table == r, axis=1))[0]) for r in rows]


@pytest.mark.parametrize("preset", ["official", "anomalib"])
@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_fit_bank_is_a_subset_of_the_right_size(train_embeddings, preset, ratio):
    config = PatchCoreConfig(
        preset=preset,
        coreset_ratio=ratio,
        projection_dim=8 if preset == "official" else None,
    )
    state = patchcore.fit(config, train_embeddings, key=jax.random.key(1))
    flat = train_embeddings.reshape(-1, 16)
    bank = np.asarray(state.memory_bank)
    assert bank.shape == (int(60 * ratio), 16) and bank.dtype == np.float32
    rows = _rows_in(bank, flat)  # raises IndexError if a row is not a patch
    assert len(set(rows)) == len(rows)


def test_fit_tiny_ratio_keeps_one_entry(train_embeddings):
    config = PatchCoreConfig(coreset_ratio=0.001)
    state = patchcore.fit(config, train_embeddings, key=jax.random.key(0))
    assert state.memory_bank.shape == (1, 16)


def test_fit_official_bank_equals_numpy_greedy_loop(train_embeddings):
    # White-box: reproduces fit's key use (split -> projection key, start key) with
    # jax.random directly, then runs the numpy loop of the official sampler.
    key = jax.random.key(3)
    config = PatchCoreConfig(coreset_ratio=0.2, projection_dim=8, num_starting_points=4)
    state = patchcore.fit(config, train_embeddings, key=key)
    flat = jnp.asarray(train_embeddings.reshape(-1, 16))
    key_proj, key_start = jax.random.split(key)
    bound = 1 / np.sqrt(16)
    proj = jax.random.uniform(key_proj, (16, 8), jnp.float32, -bound, bound)
    starts = np.asarray(jax.random.choice(key_start, 60, (4,), replace=False))
    idx = official_greedy_np(np.asarray(flat @ proj), 12, starts)
    np.testing.assert_array_equal(np.asarray(state.memory_bank), np.asarray(flat)[idx])


def test_fit_is_seeded(train_embeddings):
    config = PatchCoreConfig(coreset_ratio=0.3)
    a = patchcore.fit(config, train_embeddings, key=jax.random.key(7))
    b = patchcore.fit(config, train_embeddings, key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(a.memory_bank), np.asarray(b.memory_bank))


def test_fit_bad_input(train_embeddings):
    config = PatchCoreConfig()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"embeddings must be \(N, h, w, D\)"):
        patchcore.fit(config, train_embeddings[0], key=key)
    with pytest.raises(ValueError, match="empty"):
        patchcore.fit(config, np.zeros((0, 2, 2, 4), np.float32), key=key)
    with pytest.raises(TypeError, match="floating"):
        patchcore.fit(config, train_embeddings.astype(np.int32), key=key)
    with pytest.raises(ValueError, match="NaN"):
        patchcore.fit(config, train_embeddings * np.nan, key=key)
    with pytest.raises(TypeError, match="config must be a PatchCoreConfig"):
        patchcore.fit(PaDiMConfig(), train_embeddings, key=key)
    with pytest.raises(TypeError, match="key must be one JAX PRNG key"):
        patchcore.fit(config, train_embeddings, key=0)


def test_config_validation_and_presets():
    config = PatchCoreConfig.anomalib()
    assert (
        config.preset,
        config.projection_dim,
        config.num_neighbors,
        config.upsample,
        config.blur_mode,
    ) == ("anomalib", None, 9, "nearest", "reflect")
    assert PatchCoreConfig.anomalib(coreset_ratio=0.5).coreset_ratio == 0.5
    official = PatchCoreConfig()
    assert (
        official.levels,
        official.pretrain_dim,
        official.target_dim,
        official.coreset_ratio,
        official.projection_dim,
        official.num_starting_points,
        official.num_neighbors,
    ) == ((2, 3), 1024, 1024, 0.1, 128, 10, 1)
    assert hash(PatchCoreConfig(levels=[2, 3])) == hash(official)
    with pytest.raises(ValueError, match="preset must be one of"):
        PatchCoreConfig(preset="faiss")
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PatchCoreConfig(patch_size=2)
    with pytest.raises(ValueError, match="upsample must be one of"):
        PatchCoreConfig(upsample="bilinar")
    with pytest.raises(ValueError, match="blur_mode must be one of"):
        PatchCoreConfig(blur_mode="mirror")
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        PatchCoreConfig(sigma=-1.0)
    with pytest.raises(ValueError, match="projection_dim"):
        PatchCoreConfig(projection_dim=0)
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="coreset_ratio"):
            PatchCoreConfig(coreset_ratio=ratio)
    with pytest.raises(ValueError, match="levels"):
        PatchCoreConfig(levels=())
    with pytest.raises(ValueError, match="num_neighbors"):
        PatchCoreConfig(num_neighbors=0)
    with pytest.raises(TypeError, match="coreset_ratio must be a number"):
        PatchCoreConfig(coreset_ratio="0.1")
    with pytest.raises(TypeError, match="levels must be a sequence"):
        PatchCoreConfig(levels="23")
    with pytest.raises(TypeError, match="levels"):
        PatchCoreConfig(levels=(2.0, 3))


# ------------------------------------------------------------------------- scores


def _state(bank, **config):
    preset = config.pop("preset", "official")
    if preset == "anomalib":
        cfg = PatchCoreConfig.anomalib(**config)
    else:
        cfg = PatchCoreConfig(**config)
    return PatchCoreState(memory_bank=jnp.asarray(bank), config=cfg)


@pytest.fixture
def bank(rng):
    return rng.standard_normal((40, 6)).astype(np.float32)


@pytest.fixture
def test_embeddings(rng):
    return rng.standard_normal((2, 3, 4, 6)).astype(np.float32)


def _sk(bank, queries, k):
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank)
    dist, idx = nn.kneighbors(queries.reshape(-1, queries.shape[-1]))
    return dist.reshape(*queries.shape[:-1], k), idx.reshape(*queries.shape[:-1], k)


@pytest.mark.parametrize("k", [1, 3])
def test_official_score_matches_sklearn_squared_mean(bank, test_embeddings, k):
    state = _state(bank, num_neighbors=k, bank_chunk=16)
    got = patchcore.score(state, test_embeddings)
    dist, _ = _sk(bank, test_embeddings, k)
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(np.asarray(got), np.mean(dist**2, axis=-1), rtol=1e-5)


def test_anomalib_score_matches_sklearn_plain(bank, test_embeddings):
    state = _state(bank, preset="anomalib", bank_chunk=7)
    got = patchcore.score(state, test_embeddings)
    dist, _ = _sk(bank, test_embeddings, 1)
    np.testing.assert_allclose(np.asarray(got), dist[..., 0], rtol=1e-5)


def anomalib_image_score_np(bank, embeddings, num_neighbors):
    """anomalib ``compute_anomaly_score`` in numpy (float64)."""
    bank = bank.astype(np.float64)
    flat = embeddings.reshape(embeddings.shape[0], -1, embeddings.shape[-1])
    scores = []
    for patches in flat.astype(np.float64):
        d = np.sqrt(((patches[:, None] - bank[None]) ** 2).sum(-1))
        patch_scores, locations = d.min(1), d.argmin(1)
        if num_neighbors == 1:
            scores.append(patch_scores.max())
            continue
        best = int(np.argmax(patch_scores))
        m_star = bank[locations[best]]
        support = np.argsort(np.sqrt(((m_star - bank) ** 2).sum(-1)), kind="stable")[
            :num_neighbors
        ]
        distances = np.sqrt(((patches[best] - bank[support]) ** 2).sum(-1))
        softmax = np.exp(distances - distances.max())
        softmax /= softmax.sum()
        scores.append((1 - softmax[0]) * patch_scores[best])
    return np.array(scores)


@pytest.mark.parametrize("num_neighbors", [1, 3, 9])
def test_anomalib_image_score_matches_numpy(bank, test_embeddings, num_neighbors):
    state = _state(bank, preset="anomalib", num_neighbors=num_neighbors)
    patch_map = patchcore.score(state, test_embeddings)
    got = patchcore.image_score(state, test_embeddings, patch_map)
    ref = anomalib_image_score_np(bank, test_embeddings, num_neighbors)
    assert got.shape == (2,)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    if num_neighbors > 1:  # the re-weighting really changes the score
        assert np.all(np.asarray(got) < np.asarray(patch_map).max(axis=(1, 2)))


def test_official_image_score_is_max_patch_score(bank, test_embeddings):
    state = _state(bank)
    patch_map = patchcore.score(state, test_embeddings)
    got = patchcore.image_score(state, test_embeddings, patch_map)
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(patch_map).max(axis=(1, 2))
    )


def test_candidates_and_restricted_score_match_numpy(bank, rng):
    state = _state(bank, bank_chunk=16)
    initial = rng.standard_normal((3, 4, 6)).astype(np.float32)
    cand = patchcore.candidate_indices(state, initial, num_candidates=5)
    _, ref_idx = _sk(bank, initial, 5)
    assert cand.shape == (3, 4, 5) and cand.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cand), ref_idx)
    # eq. 5 on other embeddings, restricted to those candidates
    moved = initial + 0.3 * rng.standard_normal(initial.shape).astype(np.float32)
    got = patchcore.restricted_score(state, moved, cand)
    diff = moved[..., None, :].astype(np.float64) - bank[ref_idx]
    ref = np.min(np.sum(diff**2, axis=-1), axis=-1)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    # restricting the search can only increase the distance
    full = np.asarray(patchcore.score(state, moved[None]))[0]
    assert np.all(np.asarray(got) >= full * (1 - 1e-6))


def test_restricted_score_equals_score_when_candidates_hold_the_nearest(
    bank, test_embeddings
):
    state = _state(bank)
    cand = patchcore.candidate_indices(state, test_embeddings, num_candidates=4)
    np.testing.assert_allclose(
        np.asarray(patchcore.restricted_score(state, test_embeddings, cand)),
        np.asarray(patchcore.score(state, test_embeddings)),
        rtol=1e-6,
    )


def test_candidates_capped_at_bank_size(bank, test_embeddings):
    state = _state(bank[:3])
    cand = patchcore.candidate_indices(state, test_embeddings)  # default 50
    assert cand.shape == (2, 3, 4, 3)


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_score_jit_equals_nojit(bank, test_embeddings, preset):
    state = _state(bank, preset=preset)

    def f(s, e):
        patch_map = patchcore.score(s, e)
        return patch_map, patchcore.image_score(s, e, patch_map)

    got_map, got_img = jax.jit(f)(state, test_embeddings)
    ref_map, ref_img = f(state, test_embeddings)
    np.testing.assert_allclose(np.asarray(got_map), np.asarray(ref_map), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_img), np.asarray(ref_img), rtol=1e-6)
    if preset == "official":  # and fully op by op (slow, so one preset)
        with jax.disable_jit():
            eager = patchcore.score(state, test_embeddings)
        np.testing.assert_allclose(np.asarray(eager), np.asarray(ref_map), rtol=1e-6)


def test_score_vmap_equals_loop(bank, test_embeddings):
    state = _state(bank)
    batched = patchcore.score(state, test_embeddings)
    looped = [patchcore.score(state, e[None])[0] for e in test_embeddings]
    vmapped = jax.vmap(lambda e: patchcore.score(state, e[None])[0])(test_embeddings)
    np.testing.assert_allclose(np.asarray(batched), np.stack(looped), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(vmapped), np.stack(looped), rtol=1e-6)


def test_score_gradients_float64(rng):
    with jax.enable_x64(True):
        bank64 = rng.standard_normal((15, 4))
        emb = jnp.asarray(rng.standard_normal((1, 2, 3, 4)))
        official = _state(bank64, num_neighbors=2)
        anomalib = _state(bank64, preset="anomalib", num_neighbors=3)
        assert official.memory_bank.dtype == jnp.float64

        def f(e):
            patch_map = patchcore.score(anomalib, e)
            return (
                patchcore.score(official, e),
                patchcore.image_score(anomalib, e, patch_map),
            )

        check_grads(f, (emb,), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_score_gradients_finite_float32(bank, test_embeddings, preset):
    state = _state(bank, preset=preset)
    emb = jnp.asarray(test_embeddings).at[0, 0, 0].set(bank[3])  # zero distance

    def total(e):
        patch_map = patchcore.score(state, e)
        return patch_map.sum() + patchcore.image_score(state, e, patch_map).sum()

    grad = jax.grad(total)(emb)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.any(np.asarray(grad) != 0)


def test_states_and_inputs_of_another_shape_or_method_are_refused(
    bank, test_embeddings
):
    state = _state(bank)
    padim_state = padim.PaDiMState(
        jnp.zeros((3, 4, 6)), jnp.zeros((3, 4, 6, 6)), PaDiMConfig()
    )
    for call in (
        lambda: patchcore.score(padim_state, test_embeddings),
        lambda: patchcore.image_score(
            padim_state, test_embeddings, jnp.zeros((2, 3, 4))
        ),
        lambda: patchcore.candidate_indices(padim_state, test_embeddings),
    ):
        with pytest.raises(TypeError, match="state must be a PatchCoreState"):
            call()
    with pytest.raises(ValueError, match=r"embeddings must be \(\.\.\., 6\)"):
        patchcore.score(state, test_embeddings[..., :5])
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        patchcore.candidate_indices(state, test_embeddings, num_candidates=0)
    cand = patchcore.candidate_indices(state, test_embeddings, num_candidates=3)
    for bad in (cand.at[0, 0, 0, 0].set(40), cand.at[1, 2, 3, 2].set(-1)):
        with pytest.raises(ValueError, match=r"bank indices in \[0, 40\)"):
            patchcore.restricted_score(state, test_embeddings, bad)
    with pytest.raises(TypeError, match="integer"):
        patchcore.restricted_score(state, test_embeddings, cand.astype(jnp.float32))
    with pytest.raises(ValueError, match="locations"):
        patchcore.restricted_score(state, test_embeddings, cand[:, :2])
    # under jit the values are not checked (tracers), the shapes still are
    got = jax.jit(patchcore.restricted_score)(state, test_embeddings, cand)
    np.testing.assert_allclose(
        np.asarray(got),
        np.asarray(patchcore.restricted_score(state, test_embeddings, cand)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="locations"):
        jax.jit(patchcore.restricted_score)(state, test_embeddings, cand[:, :2])


def test_fit_refuses_zero_channels_and_overflowing_distances(key):
    with pytest.raises(ValueError, match="patchcore.fit: embeddings have 0 channels"):
        patchcore.fit(PatchCoreConfig(), np.zeros((2, 3, 3, 0), np.float32), key=key)
    huge = np.full((2, 3, 3, 4), 1e19, np.float32)
    with pytest.raises(ValueError, match="patchcore.fit: squared distances"):
        patchcore.fit(PatchCoreConfig(), huge, key=key)


def test_nan_embeddings_score_nan(bank, test_embeddings):
    state = PatchCoreState(memory_bank=jnp.asarray(bank), config=PatchCoreConfig())
    test = jnp.asarray(test_embeddings).at[0, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):  # concrete: refused at once
        patchcore.score(state, test)
    # traced: NaN propagates to the patch and image scores, never "normal"
    out = np.asarray(jax.jit(patchcore.score)(state, test))
    assert np.isnan(out[0, 0, 0]) and np.isfinite(out.ravel()[1:]).all()
    image = jax.jit(patchcore.image_score)(state, test, out)
    assert np.isnan(np.asarray(image)[0])


def test_embed_without_a_level_names_it():
    features = {2: jnp.zeros((1, 8, 8, 4))}
    with pytest.raises(ValueError, match=r"patchcore.embed: features lack level"):
        patchcore.embed(PatchCoreConfig(), features)


def test_fit_with_progress_reports_size_memory_and_a_time_estimate(
    train_embeddings, key, capsys, monkeypatch
):
    monkeypatch.setattr(patchcore, "_LONG_FIT_SECONDS", 0.0)  # "long": advise
    monkeypatch.setattr(patchcore, "_SHORT_SECONDS", 0.0)
    config = PatchCoreConfig(coreset_ratio=0.5)
    state = patchcore.fit(config, train_embeddings, key=key, progress=True)
    quiet = patchcore.fit(config, train_embeddings, key=key)
    np.testing.assert_array_equal(np.asarray(state.memory_bank),
                                  np.asarray(quiet.memory_bank))
    err = capsys.readouterr().err
    n = int(np.prod(train_embeddings.shape[:-1]))
    assert f"coreset of {n // 2:,} out of {n:,} patches" in err
    assert "GiB" in err and "the coreset will take about" in err
    assert "--set coreset_ratio=0.05" in err and "--num-train" in err


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_fit_host_embeddings_in_row_chunks_equal_device_embeddings(
    train_embeddings, key, monkeypatch, preset
):
    # Host embeddings are projected a chunk of rows at a time (7 here, so 60 rows
    # make 9 chunks) and never copied to the device whole: the same bank.
    config = PatchCoreConfig(preset=preset, coreset_ratio=0.2)
    on_device = patchcore.fit(config, jnp.asarray(train_embeddings), key=key)
    monkeypatch.setattr(patchcore, "_ROW_CHUNK", 7)
    on_host = patchcore.fit(config, train_embeddings, key=key)
    np.testing.assert_array_equal(np.asarray(on_host.memory_bank),
                                  np.asarray(on_device.memory_bank))
    huge = train_embeddings.copy()
    huge[2, 1, 1, 3] = 1e19  # in the last chunk
    with pytest.raises(ValueError, match="squared distances"):
        patchcore.fit(config, huge, key=key)


# ------------------------------------------------------------- input validation


@pytest.fixture
def tiny_states(rng, key):
    train = rng.standard_normal((2, 2, 2, 8)).astype(np.float32)
    return {
        preset: patchcore.fit(
            PatchCoreConfig(preset=preset, pretrain_dim=8, target_dim=8,
                            coreset_ratio=1.0, num_neighbors=2),
            train, key=key,
        )
        for preset in ("official", "anomalib")
    }


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_image_score_checks_patch_map_against_the_embeddings(rng, tiny_states, preset):
    state = tiny_states[preset]
    emb = rng.standard_normal((2, 2, 2, 8)).astype(np.float32)
    patch_map = patchcore.score(state, emb)
    for wrong in (np.ones(8, np.float32), np.ones((2, 2, 3), np.float32),
                  np.ones((1, 2, 2), np.float32)):
        with pytest.raises(ValueError, match=r"image_score: patch_map must be \(B, h"):
            patchcore.image_score(state, emb, wrong)
        with pytest.raises(ValueError, match="patch_map"):  # shapes: under jit too
            jax.jit(lambda e, p: patchcore.image_score(state, e, p))(emb, wrong)
    with pytest.raises(TypeError, match="patch_map must have a floating dtype"):
        patchcore.image_score(state, emb, np.asarray(patch_map).astype(np.int32))
    with pytest.raises(ValueError, match=r"embeddings must be \(B, h, w, D\)"):
        patchcore.image_score(state, emb[0], patch_map[0])
    # An empty batch: empty scores, as score() gives empty maps.
    empty = emb[:0]
    empty_map = patchcore.score(state, empty)
    assert empty_map.shape == (0, 2, 2)
    assert patchcore.image_score(state, empty, empty_map).shape == (0,)


def test_non_float_embeddings_are_refused_by_every_scoring_function(tiny_states):
    state = tiny_states["official"]
    candidates = np.zeros((1, 2, 2, 3), np.int32)
    for dtype in (bool, np.int32):
        emb = np.ones((1, 2, 2, 8), dtype)
        calls = {
            "score": lambda e: patchcore.score(state, e),
            "image_score": lambda e: patchcore.image_score(
                state, e, np.ones((1, 2, 2), np.float32)
            ),
            "candidate_indices": lambda e: patchcore.candidate_indices(state, e),
            "restricted_score": lambda e: patchcore.restricted_score(
                state, e, candidates
            ),
        }
        for name, call in calls.items():
            with pytest.raises(TypeError, match=f"{name}: embeddings must have a"):
                call(emb)


@pytest.mark.parametrize("preset", ["official", "anomalib"])
def test_embed_checks_every_level_and_embeds_an_empty_batch(rng, preset):
    config = PatchCoreConfig(preset=preset, pretrain_dim=8, target_dim=8)
    features = {
        2: rng.standard_normal((2, 4, 4, 3)).astype(np.float32),
        3: rng.standard_normal((2, 2, 2, 5)).astype(np.float32),
    }
    with pytest.raises(ValueError, match=r"features\[2\] has B = 2, features\[3\] has"):
        patchcore.embed(config, {**features, 3: features[3][:1]})
    with pytest.raises(ValueError, match=r"features\[2\] must be \(B, h, w, C\)"):
        patchcore.embed(config, {**features, 2: features[2][0]})
    with pytest.raises(ValueError, match=r"features\[3\] must be \(B, h, w, C\) with"):
        patchcore.embed(config, {**features, 3: features[3][..., :0]})
    for dtype in (bool, np.int32):
        with pytest.raises(TypeError, match=r"embed: features\[2\] must have a float"):
            patchcore.embed(config, {**features, 2: features[2].astype(dtype)})
    with pytest.raises(ValueError, match="same batch"):  # shapes: under jit too
        jax.jit(lambda f: patchcore.embed(config, f))(
            {**features, 3: features[3][:1]}
        )
    # B = 0 (the official preset's unfold used to divide by it): empty embeddings.
    full = patchcore.embed(config, features)
    empty = patchcore.embed(config, {k: v[:0] for k, v in features.items()})
    assert empty.shape == (0, *full.shape[1:])
