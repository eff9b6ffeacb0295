"""SGFR against an independent float64 loop of SGFR eq. 3-5 (Algorithm 1).

Work in progress (issue 19): the method is not registered yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jad.methods import sgfr


def omp_loop(X, y, s, eps, allowed=None):
    """SGFR Algorithm 1 as written: X (m, N) columns, signed argmax, LS, residual."""
    allowed = np.arange(X.shape[1]) if allowed is None else np.asarray(allowed)
    support, e, coef = [], y.copy(), np.zeros(0)
    while len(support) < s and np.linalg.norm(e) > eps:
        candidates = [j for j in allowed if j not in support]
        if not candidates:
            break
        corr = X[:, candidates].T @ e  # SGFR eq. 3: no absolute value
        support.append(candidates[int(np.argmax(corr))])
        coef, *_ = np.linalg.lstsq(X[:, support], y, rcond=None)  # eq. 4
        e = y - X[:, support] @ coef  # eq. 5
    return support, e


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


def test_vmapped_batch_equals_a_loop_and_gradients_are_finite():
    rng = np.random.default_rng(1)
    state = sgfr.fit(sgfr.SGFRConfig(s_ref=8, s=4), _features(rng, 12, SHAPES))
    test = {lv: jnp.asarray(x) for lv, x in _features(rng, 3, SHAPES).items()}
    batched = sgfr.score(state, test)
    for b in range(3):
        one = sgfr.score(state, {lv: x[b : b + 1] for lv, x in test.items()})
        for level in batched:
            np.testing.assert_allclose(batched[level][b], one[level][0], rtol=1e-5,
                                       atol=1e-6)
    grad = jax.grad(lambda e: sum(m.sum() for m in sgfr.score(state, e).values()))(
        test)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad.values())


def test_too_few_nominal_images_are_refused_with_the_minimum():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="needs at least 40 nominal images; got 12"):
        sgfr.fit(sgfr.SGFRConfig(), _features(rng, 12, SHAPES))
