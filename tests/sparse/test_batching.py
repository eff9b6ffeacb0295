"""The custom batching rules of jad.sparse: vmap over dictionaries maps on CPU.

``jax.vmap`` of :func:`jad.sparse.omp`, :func:`~jad.sparse.omp_gram` or
:func:`~jad.sparse.ksvd` over dictionaries (PSDL's one per location) must give what a
Python loop gives, whichever branch the rule takes (``lax.map`` on CPU, the plain
vmap on accelerators, forced here by faking the backend), nested inside another
vmap, under jit and under grad.
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jad.sparse import dct_dictionary, ksvd, omp, omp_gram

L, N, M, S = 4, 12, 9, 3  # L differs from every loop length inside


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    dictionaries = rng.standard_normal((L, M, M)).astype(np.float32)
    dictionaries /= np.linalg.norm(dictionaries, axis=1, keepdims=True)
    signals = rng.standard_normal((L, N, M)).astype(np.float32)
    return jnp.asarray(dictionaries), jnp.asarray(signals)


def _maps_over_dictionaries(fn, *args) -> bool:
    """Whether the program of ``fn`` has a scan of length L (a map over them)."""

    def lengths(jaxpr):
        found = set()
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.add(eqn.params["length"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found |= lengths(sub)
        return found

    return L in lengths(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.fixture(params=["cpu", "accelerator"])
def backend(request, monkeypatch):
    """Both branches of the rule (shared by omp, omp_gram and ksvd)."""
    # Traced programs are cached by jit whatever the backend says: start afresh.
    jax.clear_caches()
    if request.param == "accelerator":  # the rule's vmap branch, run on the CPU
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    yield request.param
    jax.clear_caches()


def test_omp_vmapped_over_dictionaries_equals_a_loop(backend):
    d, y = _problem()
    fn = jax.jit(jax.vmap(lambda d, y: omp(d, y, S)))
    out = fn(d, y)
    for i in range(L):
        one = omp(d[i], y[i], S)
        np.testing.assert_array_equal(out.support[i], one.support)
        np.testing.assert_allclose(out.coef[i], one.coef, rtol=1e-5, atol=1e-6)
    # On CPU the dictionaries are mapped: a loop (scan) over them in the program.
    assert _maps_over_dictionaries(jax.vmap(lambda d, y: omp(d, y, S).coef), d, y) \
        == (backend == "cpu")


def test_omp_gram_nested_vmaps_equal_a_loop():
    backend = jax.default_backend()
    d, y = _problem(1)
    gram = jnp.einsum("lmk,lmj->lkj", d, d)
    xy = jnp.einsum("lnm,lmk->lnk", y, d).reshape(L, 2, N // 2, M)
    norms = jnp.sum(y * y, axis=-1).reshape(L, 2, N // 2)

    def one(g, xy, n):
        return omp_gram(g, xy, S, norms_squared=n).coef

    # Outer vmap over dictionaries, inner over groups of signals.
    nested = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)))(gram, xy, norms)
    assert _maps_over_dictionaries(
        jax.vmap(jax.vmap(one, in_axes=(None, 0, 0))), gram, xy, norms) == (
        backend == "cpu")
    for i in range(L):
        for j in range(2):
            want = one(gram[i], xy[i, j], norms[i, j])
            np.testing.assert_allclose(nested[i, j], want, rtol=1e-5, atol=1e-6)


def test_gradients_through_vmapped_omp_equal_a_loop():
    d, y = _problem(2)

    def loss(d, y):
        return jnp.sum(omp(d, y, S).coef ** 2)

    grads = jax.grad(lambda d, y: jnp.sum(jax.vmap(loss)(d, y)), argnums=(0, 1))(d, y)
    for i in range(L):
        gd, gy = jax.grad(loss, argnums=(0, 1))(d[i], y[i])
        np.testing.assert_allclose(grads[0][i], gd, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grads[1][i], gy, rtol=1e-4, atol=1e-5)


def test_ksvd_vmapped_over_locations_equals_a_loop(backend):
    _, y = _problem(3)
    init = dct_dictionary(M, M, separable=True)
    fn = functools.partial(ksvd, n_nonzero=S, n_iter=2, method="approx",
                           monotone=False, replace_unused=False)
    out = jax.jit(jax.vmap(fn, in_axes=(0, None)))(y, init)
    for i in range(L):
        one = fn(y[i], init)
        np.testing.assert_allclose(out.dictionary[i], one.dictionary, atol=1e-5)
        np.testing.assert_allclose(out.errors[i], one.errors, rtol=1e-5)
    assert _maps_over_dictionaries(jax.vmap(fn, in_axes=(0, None)), y, init) == (
        backend == "cpu")


def test_omp_in_cache_sized_groups_of_signals_equals_all_at_once(monkeypatch):
    import sys

    omp_module = sys.modules["jad.sparse.omp"]
    d, y = _problem(4)
    whole = omp(d[0], y.reshape(-1, M)[:45], S)
    jax.clear_caches()
    # Tables of 4 bytes x S x M = 108 B: groups of 8 signals, 45 = 5 x 8 + 5.
    monkeypatch.setattr(omp_module, "_CPU_TABLE_BYTES", 8 * 4 * S * M)
    assert omp_module._signal_batch(45, S, M) == (8 if jax.default_backend() == "cpu"
                                                  else None)
    grouped = omp(d[0], y.reshape(-1, M)[:45], S)
    jax.clear_caches()
    np.testing.assert_array_equal(grouped.support, whole.support)
    np.testing.assert_allclose(grouped.coef, whole.coef, rtol=1e-6, atol=1e-7)
