"""SGFR against an independent float64 loop of SGFR eq. 3-5 (Algorithm 1).

The protocol tests (tests/methods/test_protocol.py) cover SGFR too.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import omp_loop

from jad.methods import sgfr


def _features(rng, n, shapes):
    return {lv: rng.random((n, *shape)).astype(np.float32)
            for lv, shape in shapes.items()}


SHAPES = {2: (4, 4, 6), 3: (2, 2, 8), 4: (1, 1, 16)}


@pytest.mark.parametrize("s_ref,s", [(10, 7), (6, 3)])
def test_score_matches_a_float64_loop_of_algorithm_2(s_ref, s):
    rng = np.random.default_rng(0)
    train = _features(rng, 24, SHAPES)
    test = _features(rng, 3, SHAPES)
    config = sgfr.SGFRConfig(score_levels=(2, 3), ref_level=4, s_ref=s_ref, s=s,
                             sigma=0.0)
    state = sgfr.fit(config, train)
    maps = sgfr.score(state, {lv: jnp.asarray(x) for lv, x in test.items()})
    for b in range(3):
        X_ref = train[4].reshape(24, -1).T.astype(np.float64)
        m_s, _ = omp_loop(X_ref, test[4][b].reshape(-1).astype(np.float64), s_ref,
                          1e-6)
        for level in (2, 3):
            X = train[level].reshape(24, -1).T.astype(np.float64)
            _, e = omp_loop(X, test[level][b].reshape(-1).astype(np.float64), s,
                            1e-6, allowed=m_s)
            expected = np.linalg.norm(e.reshape(SHAPES[level]), axis=-1)
            np.testing.assert_allclose(maps[level][b], expected, rtol=2e-3,
                                       atol=1e-4)


def test_vmapped_batch_equals_a_loop_and_gradients_are_finite(monkeypatch):
    rng = np.random.default_rng(1)
    state = sgfr.fit(sgfr.SGFRConfig(s_ref=8, s=4), _features(rng, 12, SHAPES))
    test = {lv: jnp.asarray(x) for lv, x in _features(rng, 3, SHAPES).items()}
    batched = sgfr.score(state, test)  # one image after another on CPU
    with monkeypatch.context() as patch:  # the accelerators' vmapped batch
        patch.setattr(sgfr.jax, "default_backend", lambda: "gpu")
        vmapped = sgfr.score(state, test)
    for level in batched:
        np.testing.assert_allclose(vmapped[level], batched[level], rtol=1e-5,
                                   atol=1e-6)
    for b in range(3):
        one = sgfr.score(state, {lv: x[b : b + 1] for lv, x in test.items()})
        for level in batched:
            np.testing.assert_allclose(batched[level][b], one[level][0], rtol=1e-5,
                                       atol=1e-6)
    grad = jax.grad(lambda e: sum(m.sum() for m in sgfr.score(state, e).values()))(
        test)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad.values())


def test_too_few_nominal_images_and_bad_configs_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="needs at least 40 nominal images; got 12"):
        sgfr.fit(sgfr.SGFRConfig(), _features(rng, 12, SHAPES))
    with pytest.raises(ValueError, match="epsilon must be finite"):
        sgfr.SGFRConfig(epsilon=float("inf"))
    with pytest.raises(TypeError, match="score_levels must be a tuple of ints"):
        sgfr.SGFRConfig(score_levels=2)
    with pytest.raises(ValueError, match="must not repeat a level"):
        sgfr.SGFRConfig(score_levels=(2, 2))
    assert sgfr.SGFRConfig(score_levels=(np.int64(3),)).score_levels == (3,)


def test_sampling_none_reads_the_bank_as_is_and_equals_the_gathered_path():
    rng = np.random.default_rng(6)
    config = sgfr.SGFRConfig(s_ref=12, s=4, sampling="none")
    state = sgfr.fit(config, _features(rng, 12, SHAPES))
    test = {lv: jnp.asarray(x) for lv, x in _features(rng, 3, SHAPES).items()}
    maps = sgfr.score(state, test)  # every entry, no gather
    context = sgfr.loss_context(state, test)  # (B, N): every entry, gathered
    np.testing.assert_array_equal(context, np.tile(np.arange(12), (3, 1)))
    gathered = sgfr.feature_loss(state, test, context)
    for level in maps:
        np.testing.assert_allclose(maps[level], gathered[level], rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="k >= s = 4"):
        sgfr.feature_loss(state, test, context[:, :3])


def _walk_dots(jaxpr, found):
    """Every dot_general's precision in a jaxpr, sub-jaxprs (loops, conds) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _walk_dots(inner, found)
    return found


def test_every_product_of_scoring_is_at_highest_precision():
    # TF32 (the GPU default for float32 matmuls) can flip supports at the Grams'
    # condition numbers: Grams, correlations and OMP's products in Gram space are
    # all asked for in full float32 (on CPU the check is on the program).
    rng = np.random.default_rng(3)
    state = sgfr.fit(sgfr.SGFRConfig(s_ref=8, s=4), _features(rng, 12, SHAPES))
    test = {lv: jnp.asarray(x) for lv, x in _features(rng, 2, SHAPES).items()}
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    for fn in (lambda e: sgfr.score(state, e),
               lambda e: sgfr.representation_error(state, e),
               lambda e: sgfr._gram(e[2])):
        found = _walk_dots(jax.make_jaxpr(fn)(test).jaxpr, [])
        assert found and all(p == highest for p in found), found


def test_representation_error_matches_loops_of_eq_9():
    rng = np.random.default_rng(4)
    train = _features(rng, 16, SHAPES)
    test = _features(rng, 3, SHAPES)
    config = sgfr.SGFRConfig(score_levels=(2, 3), ref_level=4, s_ref=5, s=3)
    state = sgfr.fit(config, train)
    result = sgfr.representation_error(state, test, level=3)
    maps = sgfr.score(state, test)
    np.testing.assert_allclose(result.reconstruction, maps[3].mean(axis=(1, 2)),
                               rtol=1e-5)
    np.testing.assert_array_equal(result.support, sgfr.loss_context(state, test))
    for b in range(3):
        ref = train[4].reshape(16, -1).astype(np.float64)
        dist = np.linalg.norm(ref - test[4][b].reshape(-1), axis=1)
        nearest = np.argsort(dist, kind="stable")[:5]  # the s_ref nearest images
        np.testing.assert_array_equal(result.neighbours[b], nearest)
        gallery = train[3][nearest].reshape(-1, 8).astype(np.float64)
        queries = test[3][b].reshape(-1, 8).astype(np.float64)
        expected = np.mean([np.min(np.linalg.norm(gallery - q, axis=1))
                            for q in queries])
        np.testing.assert_allclose(result.matching[b], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="level must be one of"):
        sgfr.representation_error(state, test, level=7)
    with pytest.raises(ValueError, match="NaN or inf"):
        sgfr.representation_error(state, {**test, 3: test[3] * np.nan}, level=3)


def test_a_planted_anomaly_is_localised():
    # Nominal maps are mixtures of a few patterns; the test image is one more
    # mixture with a foreign feature vector planted at one location of level 2.
    rng = np.random.default_rng(5)
    shapes = {2: (8, 8, 6), 3: (4, 4, 8), 4: (2, 2, 16)}
    bases = {lv: rng.normal(size=(4, int(np.prod(sh)))) for lv, sh in shapes.items()}

    def nominal(n):
        weights = rng.uniform(0.5, 1.5, (n, 4))
        return {lv: (weights @ bases[lv] + 0.01 * rng.normal(size=(n, b.shape[1])))
                .reshape(n, *shapes[lv]).astype(np.float32)
                for lv, b in bases.items()}

    state = sgfr.fit(sgfr.SGFRConfig(s_ref=10, s=5), nominal(30))
    test = nominal(2)
    test[2][1, 5, 2] += 3.0 * rng.normal(size=6).astype(np.float32)
    maps = np.asarray(sgfr.score(state, test)[2])
    assert np.unravel_index(np.argmax(maps[1]), maps[1].shape) == (5, 2)
    assert maps[1].max() > 10 * maps[0].max()  # the clean image stays low
    others = np.delete(maps[1].ravel(), 5 * 8 + 2)
    assert others.max() < 0.1 * maps[1].max()  # the rest is still reconstructed


MTD_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"


@pytest.fixture(scope="module")
def mtd_features(tmp_path_factory):
    import dataclasses

    import jad.backbones as bb
    from jad import data
    from jad.detector import embed_images
    from jad.methods import make_config

    if not MTD_ROOT.is_dir():
        pytest.skip(f"real MTD is not at {MTD_ROOT}")
    transform = data.Transform(size=224)
    variables = bb.load_pretrained(
        "efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("w"), progress=False)
    config = make_config("sgfr", "mtd")

    def embed(dataset):
        parts = [embed_images("sgfr", config, "efficientnet_lite0", variables, batch)
                 for batch in (b.images for b in dataset.batches(20))]
        return {lv: np.concatenate([p[lv] for p in parts]) for lv in config.levels}

    train = data.load_dataset("mtd", MTD_ROOT, None, "train", transform=transform,
                              num_train=NUM_MTD_TRAIN)
    test = data.load_dataset("mtd", MTD_ROOT, None, "test", transform=transform)
    pick = np.sort(np.random.default_rng(0).choice(len(test), NUM_MTD_TEST, False))
    test = dataclasses.replace(test, samples=[test.samples[i] for i in pick])
    return embed(train), embed(test)


NUM_MTD_TRAIN, NUM_MTD_TEST = 60, 100


@pytest.mark.parametrize("s_ref,s", [(10, 7), (40, 17)])
def test_supports_agree_with_a_float64_loop_on_real_mtd(mtd_features, s_ref, s):
    from jad.methods import make_config

    train, test = mtd_features
    config = make_config("sgfr", "mtd", s_ref=s_ref, s=s)
    state = sgfr.fit(config, train)
    m_s = np.asarray(sgfr.loss_context(state, test))
    maps = sgfr.score(state, test)
    X = {lv: x.reshape(len(x), -1).T.astype(np.float64) for lv, x in train.items()}
    agree, worst = 0, 0.0
    for b in range(NUM_MTD_TEST):
        ref_support, _ = omp_loop(X[4], test[4][b].reshape(-1).astype(np.float64),
                                  s_ref, config.epsilon)
        if list(m_s[b][m_s[b] >= 0]) != ref_support:  # M_S, in selection order
            continue
        same = True
        for level in config.score_levels:
            support, e = omp_loop(X[level], test[level][b].reshape(-1)
                                  .astype(np.float64), s, config.epsilon,
                                  allowed=ref_support)
            expected = np.linalg.norm(e.reshape(test[level].shape[1:]), axis=-1)
            error = (np.linalg.norm(np.asarray(maps[level][b]) - expected)
                     / np.linalg.norm(expected))
            worst = max(worst, error)
            same &= error <= 1e-5
        agree += same
    print(f"(s_ref, s) = ({s_ref}, {s}): {agree}/{NUM_MTD_TEST} agree; "
          f"worst relative e_l error {worst:.2e}")
    assert agree >= 0.99 * NUM_MTD_TEST
