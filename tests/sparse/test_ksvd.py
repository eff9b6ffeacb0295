"""K-SVD and the dictionary initialisers, against numpy references."""

from __future__ import annotations

import doctest
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jad.sparse import dct_dictionary, haar_dictionary, ksvd, random_dictionary


def planted_problem(seed, m=24, K=24, N=1000, s=3, noise=0.01):
    """Signals = planted sparse codes x planted unit-norm dictionary + noise."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((m, K))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    codes = np.zeros((N, K))
    for i in range(N):
        idx = rng.choice(K, s, replace=False)
        codes[i, idx] = rng.choice([-1.0, 1.0], s) * (1.0 + rng.random(s))
    signals = codes @ dictionary.T + noise * rng.standard_normal((N, m))
    init = signals[rng.choice(N, K, replace=False)].T  # K-SVD's usual data init
    return signals.astype(np.float32), init.astype(np.float32), dictionary


def numpy_ksvd_sweep(signals, dictionary, codes, method):
    """One atom sweep in plain numpy (Aharon et al. 2006 / Rubinstein et al. 2008)."""
    dictionary, codes = dictionary.copy(), codes.copy()
    for k in range(dictionary.shape[1]):
        users = np.flatnonzero(codes[:, k])
        if users.size == 0:
            continue
        dictionary[:, k] = 0
        error = signals[users] - codes[users] @ dictionary.T  # (|w|, m)
        if method == "exact":
            u, sv, vt = np.linalg.svd(error, full_matrices=False)
            d, g = vt[0], sv[0] * u[:, 0]
        else:
            d = error.T @ codes[users, k]
            d /= np.linalg.norm(d)
            g = error @ d
        dictionary[:, k] = d
        codes[users, k] = g
    return dictionary, codes


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_ksvd_error_never_increases(method):
    signals, init, _ = planted_problem(3, m=16, K=24, N=400)
    res = ksvd(signals, init, 3, 12, method=method)
    errors = np.asarray(res.errors)
    # float32 rounding of the error itself (values ~0.1-1): 1e-5 relative.
    assert np.all(np.diff(errors) <= 1e-5 * errors[:-1]), errors
    assert errors[-1] < 0.9 * errors[0]  # it does learn


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_ksvd_recovers_planted_atoms(method):
    signals, init, planted = planted_problem(2)
    res = ksvd(signals, init, 3, 30, method=method)
    cos = np.abs(planted.T @ np.asarray(res.dictionary)).max(axis=1)
    assert np.mean(cos > 0.99) >= 0.9, np.sort(cos)


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_ksvd_one_iteration_matches_numpy_sweep(method):
    # One iteration = OMP then the sweep; compare the sweep with the numpy loop on the
    # same OMP codes (taken from jad's OMP, which is itself tested against sklearn).
    with jax.enable_x64(True):
        signals = planted_problem(5, m=12, K=16, N=120)[0].astype(np.float64)
        # a random init (a data init would contain exact signals, whose OMP stop
        # after one atom depends on the last bit of rounding)
        init = np.random.default_rng(1).standard_normal((12, 16))
        init /= np.linalg.norm(init, axis=0)
        from jad.sparse import omp

        codes0 = np.asarray(omp(init, signals, 3).coef)
        ref_d, ref_codes = numpy_ksvd_sweep(signals, init, codes0, method)
        res = ksvd(signals, init, 3, 1, method=method, monotone=False)
        # the SVD sign is arbitrary: align each atom with the reference
        sign = np.sign(np.sum(np.asarray(res.dictionary) * ref_d, axis=0))
        np.testing.assert_allclose(np.asarray(res.dictionary) * sign, ref_d, atol=1e-8)
        np.testing.assert_allclose(np.asarray(res.codes) * sign, ref_codes, atol=1e-8)


def test_ksvd_vmap_equals_loop_and_jit():
    signals = np.stack([planted_problem(s, m=8, K=8, N=60)[0] for s in range(3)])
    init = jnp.broadcast_to(dct_dictionary(8, 8), (3, 8, 8))
    fn = functools.partial(ksvd, n_nonzero=2, n_iter=3, method="approx")
    batched = jax.jit(jax.vmap(fn))(signals, init)
    for loc in range(3):
        single = fn(signals[loc], init[loc])
        # float32, different batching of the same matmuls: 1e-5
        np.testing.assert_allclose(
            batched.dictionary[loc], single.dictionary, atol=1e-5
        )
        np.testing.assert_allclose(batched.codes[loc], single.codes, atol=1e-4)
        np.testing.assert_allclose(batched.errors[loc], single.errors, rtol=1e-5)


def test_ksvd_replaces_unused_atoms_with_worst_signal():
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((30, 6)).astype(np.float32)
    init = np.eye(6, 8, dtype=np.float32)  # atoms 6 and 7 are zero: unused
    res = ksvd(signals, init, 2, 1, method="approx")
    assert int(res.n_replaced[0]) >= 2
    d = np.asarray(res.dictionary)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, rtol=1e-5)
    # each replaced atom is a normalised training signal
    normed = signals / np.linalg.norm(signals, axis=1, keepdims=True)
    for k in (6, 7):
        assert np.max(np.abs(normed @ d[:, k])) > 1 - 1e-5
    for method in ("approx", "exact"):
        kept = ksvd(signals, init, 2, 1, method=method, replace_unused=False)
        assert int(kept.n_replaced[0]) == 0
        # unused atoms stay as they were (zero), whatever the rank-1 update gives
        np.testing.assert_array_equal(np.asarray(kept.dictionary)[:, 6:], 0.0)


def test_ksvd_key_changes_atom_order_only():
    signals, init, _ = planted_problem(1, m=8, K=8, N=80)
    a = ksvd(signals, init, 2, 3, method="approx", key=jax.random.key(0))
    b = ksvd(signals, init, 2, 3, method="approx", key=jax.random.key(0))
    np.testing.assert_array_equal(a.dictionary, b.dictionary)
    assert np.all(np.isfinite(np.asarray(a.errors)))


def test_ksvd_bad_input():
    y = np.ones((10, 4), np.float32)
    d = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="init_dictionary"):
        ksvd(y, np.eye(5, dtype=np.float32), 2, 1)
    with pytest.raises(ValueError, match="n_nonzero"):
        ksvd(y, d, 0, 1)
    with pytest.raises(ValueError, match="n_nonzero"):
        ksvd(y, d, 5, 1)
    with pytest.raises(ValueError, match="n_iter"):
        ksvd(y, d, 2, 0)
    with pytest.raises(TypeError, match="n_iter"):
        ksvd(y, d, 2, 1.5)
    with pytest.raises(ValueError, match="method"):
        ksvd(y, d, 2, 1, method="svd")
    with pytest.raises(TypeError, match="signals"):
        ksvd(np.ones((10, 4), np.int32), d, 2, 1)
    bad = y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="signals"):
        ksvd(bad, d, 2, 1)
    with pytest.raises(TypeError, match="key"):
        ksvd(y, d, 2, 1, key=3)


# --- dictionaries ---------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 5, 8, 16])
def test_dct_square_is_orthonormal_and_equals_scipy(m):
    from scipy.fft import idct

    d = np.asarray(dct_dictionary(m, m), np.float64)
    np.testing.assert_allclose(d.T @ d, np.eye(m), atol=1e-6)
    # columns of the inverse orthonormal DCT-II = scipy's idct of the unit vectors
    ref = idct(np.eye(m), type=2, norm="ortho", axis=0)
    np.testing.assert_allclose(d, ref, atol=1e-6)


def test_dct_separable_is_kron_of_1d():
    d = np.asarray(dct_dictionary(16, 16, separable=True))
    one = np.asarray(dct_dictionary(4, 4))
    np.testing.assert_allclose(d, np.kron(one, one), atol=1e-7)
    np.testing.assert_allclose(d.T @ d, np.eye(16), atol=1e-6)


@pytest.mark.parametrize("m", [2, 6, 8, 13])
def test_haar_square_is_orthonormal(m):
    h = np.asarray(haar_dictionary(m, m), np.float64)
    np.testing.assert_allclose(h.T @ h, np.eye(m), atol=1e-6)


def test_haar_power_of_two_matches_classic_haar():
    # classic Haar basis for m = 4: constant, [1,1,-1,-1], [1,-1,0,0], [0,0,1,-1]
    ref = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 0, 0], [0, 0, 1, -1]], float)
    ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
    np.testing.assert_allclose(np.asarray(haar_dictionary(4, 4)), ref, atol=1e-7)


@pytest.mark.parametrize("build", [dct_dictionary, haar_dictionary])
def test_overcomplete_unit_norm_and_full_rank(build):
    d = np.asarray(build(8, 20))
    assert d.shape == (8, 20)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0, rtol=1e-6)
    assert np.linalg.matrix_rank(d) == 8
    assert np.all(np.isfinite(d))


def test_random_dictionary_unit_norm_and_seeded():
    a = random_dictionary(jax.random.key(0), 5, 9)
    b = random_dictionary(jax.random.key(0), 5, 9)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-6)
    assert not np.allclose(a, random_dictionary(jax.random.key(1), 5, 9))


def test_dictionary_bad_input():
    with pytest.raises(ValueError, match="K"):
        dct_dictionary(8, 4)
    with pytest.raises(ValueError, match="separable"):
        dct_dictionary(8, 8, separable=True)
    with pytest.raises(TypeError, match="m"):
        haar_dictionary(8.0, 8)


@pytest.mark.parametrize("module", ["jad.sparse.ksvd", "jad.sparse.dictionaries"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# --- dtypes, keys, empty axes, scale ---------------------------------------------

# One compiled K-SVD per (method, dtype, options) for the tests below: m = K = 8,
# N = 60, s = 2, two iterations.
_SMALL = {"m": 8, "K": 8, "N": 60}


@functools.partial(jax.jit, static_argnames=("method", "replace_unused"))
def _ksvd_small(signals, init, key=None, *, method="approx", replace_unused=True):
    return ksvd(
        signals, init, 2, 2, method=method, key=key, replace_unused=replace_unused
    )


@pytest.mark.parametrize(
    "half, method", [(jnp.float16, "exact"), (jnp.bfloat16, "approx")]
)
def test_ksvd_half_precision_is_computed_in_float32(half, method):
    # float16 used to crash in LAPACK (no half-precision SVD/solve); omp accepts it,
    # and both compute in float32 and return the input dtype.
    signals, init, _ = planted_problem(2, **_SMALL)
    signals, init = jnp.asarray(signals, half), jnp.asarray(init, half)
    got = _ksvd_small(signals, init, method=method)
    ref = _ksvd_small(
        signals.astype(jnp.float32), init.astype(jnp.float32), method=method
    )
    for name in ("dictionary", "codes", "errors"):
        assert getattr(got, name).dtype == half, name
        np.testing.assert_array_equal(
            getattr(got, name), getattr(ref, name).astype(half), err_msg=name
        )


def test_ksvd_key_must_be_one_prng_key():
    signals, init, _ = planted_problem(3, **_SMALL)
    bad_keys = [
        jnp.zeros(2, jnp.float32),  # shape (2,) but not uint32
        jnp.zeros(2, jnp.int32),
        jax.random.split(jax.random.key(0), 2),  # two keys
        np.zeros(3, np.uint32),
        [0, 1],
    ]
    for key in bad_keys:
        with pytest.raises(TypeError, match="ksvd: key must be one JAX PRNG key"):
            ksvd(signals, init, 2, 1, key=key)
        with pytest.raises(TypeError, match="ksvd: key must be one JAX PRNG key"):
            _ksvd_small(signals, init, key)  # also under jit
    raw = _ksvd_small(signals, init, jax.random.PRNGKey(5))
    host = _ksvd_small(signals, init, np.asarray(jax.random.PRNGKey(5)))
    np.testing.assert_array_equal(raw.dictionary, host.dictionary)


def test_ksvd_refuses_empty_signal_dimension_and_dictionary():
    with pytest.raises(ValueError, match=r"ksvd: signals must have m >= 1"):
        ksvd(np.zeros((5, 0), np.float32), np.zeros((0, 3), np.float32), 1, 1)
    with pytest.raises(ValueError, match=r"ksvd: init_dictionary must hold at least"):
        ksvd(np.ones((5, 4), np.float32), np.zeros((4, 0), np.float32), 1, 1)


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_ksvd_is_exact_for_huge_and_tiny_signals(method):
    # Signals scaled by 2^70 (‖y‖² overflows float32) or 2^-70 (underflows): the
    # atoms must not change and codes and errors scale exactly (powers of two).
    signals, init, _ = planted_problem(4, **_SMALL)
    plain = _ksvd_small(signals, init, method=method)
    assert np.all(np.isfinite(np.asarray(plain.errors)))
    for exponent in (70, -70):
        scale = np.float32(2.0**exponent)
        got = _ksvd_small(signals * scale, init, method=method)
        np.testing.assert_array_equal(got.dictionary, plain.dictionary)
        np.testing.assert_array_equal(got.codes, np.asarray(plain.codes) * scale)
        np.testing.assert_array_equal(got.errors, np.asarray(plain.errors) * scale)


def test_ksvd_initial_atoms_of_any_finite_scale_are_normalised():
    # Atoms of ~1e25 or ~1e-25: their squared norms overflow or underflow float32,
    # which used to turn every atom into a zero (unused) one.
    signals, init, _ = planted_problem(5, **_SMALL)
    plain = _ksvd_small(signals, init, replace_unused=False)
    for scale in (1e25, 1e-25):
        got = _ksvd_small(signals, init * np.float32(scale), replace_unused=False)
        # float32: the atoms' norms are rounded differently at another scale.
        np.testing.assert_allclose(got.errors, plain.errors, rtol=1e-5)
        np.testing.assert_allclose(got.dictionary, plain.dictionary, atol=1e-5)


@pytest.mark.parametrize("method", ["exact", "approx"])
def test_ksvd_nan_under_jit_gives_nan_errors(method):
    signals, init, _ = planted_problem(6, **_SMALL)
    signals[3, 2] = np.nan
    got = _ksvd_small(signals, init, method=method)
    assert np.all(np.isnan(np.asarray(got.errors)))


def test_random_dictionary_key_must_be_one_prng_key():
    for key in (3, jnp.zeros(2, jnp.float32), jax.random.split(jax.random.key(0))):
        with pytest.raises(TypeError, match="random_dictionary: key"):
            random_dictionary(key, 4, 6)
    np.testing.assert_array_equal(
        random_dictionary(jax.random.PRNGKey(0), 4, 6),
        random_dictionary(np.asarray(jax.random.PRNGKey(0)), 4, 6),
    )


def test_dictionaries_refuse_empty_dimensions():
    for build in (dct_dictionary, haar_dictionary):
        with pytest.raises(ValueError, match=f"{build.__name__}: m must be >= 1"):
            build(0, 4)
        with pytest.raises(ValueError, match=f"{build.__name__}: K must be >= 4"):
            build(4, 0)
    with pytest.raises(ValueError, match="random_dictionary: m must be >= 1"):
        random_dictionary(jax.random.key(0), 0, 3)
    with pytest.raises(ValueError, match="random_dictionary: K must be >= 1"):
        random_dictionary(jax.random.key(0), 3, 0)


def test_exact_ksvd_codes_keep_at_most_n_nonzero_atoms():
    # The exact atom update's singular vector is ~1e-7 (not 0) on non-users in
    # float32; unmasked, a code grew beyond n_nonzero atoms.
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((6, 4)).astype(np.float32)
    init = rng.standard_normal((4, 5)).astype(np.float32)
    for n_iter in (1, 3):
        codes = ksvd(signals, init, 1, n_iter, method="exact").codes
        assert (np.count_nonzero(np.asarray(codes), axis=1) <= 1).all()
