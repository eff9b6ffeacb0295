"""Tests of jad.sparse.omp (omp, omp_gram) against scikit-learn and a plain numpy OMP.

Speed: omp is not jitted internally, so almost every call goes through the jitted
wrappers below, which always pass ``tol`` as an array and ``atom_mask`` as a full bool
array. Tests then share a handful of compiled shapes: the "standard" batch
(_B, _M) signals over a (_M, _K) dictionary with n_nonzero in _SPARSITIES. Smaller
random problems are embedded in it by zero padding: zero rows leave DᵀD and Dᵀy
unchanged, and zero atoms are never selected (part of omp's contract, checked below).
"""

from __future__ import annotations

import doctest
import functools
import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loosen, random_dictionary_np, x64_if
from jax.test_util import check_grads
from sklearn.linear_model import orthogonal_mp_gram

from jad.sparse import OMPResult, omp, omp_gram

_B, _M, _K = 4, 32, 48  # the standard compiled shape
_SPARSITIES = (1, 5, 9)  # the n_nonzero values compiled for it


# --------------------------------------------------------------------------- helpers


@functools.partial(jax.jit, static_argnames=("n_nonzero", "selection"))
def _omp_jit(dictionary, signals, tol, atom_mask, *, n_nonzero, selection):
    return omp(
        dictionary,
        signals,
        n_nonzero,
        tol=tol,
        atom_mask=atom_mask,
        selection=selection,
    )


@functools.partial(jax.jit, static_argnames=("n_nonzero", "selection"))
def _omp_gram_jit(gram, xy, norms_squared, tol, atom_mask, *, n_nonzero, selection):
    return omp_gram(
        gram,
        xy,
        n_nonzero,
        norms_squared=norms_squared,
        tol=tol,
        atom_mask=atom_mask,
        selection=selection,
    )


def _to_numpy(result: OMPResult) -> OMPResult:
    return OMPResult(*(None if x is None else np.asarray(x) for x in result))


def run_omp(
    dictionary, signals, n_nonzero, *, tol=0.0, atom_mask=None, selection="abs"
):
    """Jitted omp with a stable call signature (one compilation per shape/dtype)."""
    dictionary = jnp.asarray(dictionary)
    signals = jnp.asarray(signals)
    if atom_mask is None:
        atom_mask = np.ones(signals.shape[:-1] + (dictionary.shape[1],), bool)
    tol = jnp.asarray(tol, signals.dtype)
    result = _omp_jit(
        dictionary,
        signals,
        tol,
        jnp.asarray(atom_mask),
        n_nonzero=n_nonzero,
        selection=selection,
    )
    return _to_numpy(result)


def run_omp_gram(dictionary, signals, n_nonzero, *, tol=0.0, selection="abs"):
    """Jitted omp_gram on G = DᵀD, Dᵀy and ‖y‖² computed in numpy."""
    dictionary = np.asarray(dictionary)
    signals = np.asarray(signals)
    dtype = signals.dtype
    result = _omp_gram_jit(
        jnp.asarray(dictionary.T @ dictionary, dtype),
        jnp.asarray(signals @ dictionary, dtype),
        jnp.asarray(np.sum(signals**2, axis=-1), dtype),
        jnp.asarray(tol, dtype),
        jnp.ones(signals.shape[:-1] + (dictionary.shape[1],), bool),
        n_nonzero=n_nonzero,
        selection=selection,
    )
    return _to_numpy(result)


def sklearn_omp(dictionary, signals, n_nonzero, *, tol=None):
    """scikit-learn's Gram OMP: (B, K) coefficients and each signal's ordered support.

    ``tol`` is the residual *norm* (scikit-learn's is the squared norm, and overrides
    ``n_nonzero``). The selection order is recovered from the growing supports of the
    runs with 1..n atoms (the n-atom run's first steps are the (n-1)-atom run).
    """
    gram = dictionary.T @ dictionary
    xy = (signals @ dictionary).T  # (K, B)
    with warnings.catch_warnings():
        # "Orthogonal matching pursuit ended prematurely": an exact fit, checked by
        # the callers through the support length.
        warnings.simplefilter("ignore", RuntimeWarning)
        if tol is not None:
            coef = orthogonal_mp_gram(
                gram, xy, tol=tol**2, norms_squared=np.sum(signals**2, axis=-1)
            )
            return coef.reshape(-1, len(signals)).T, None
        coefs = [
            orthogonal_mp_gram(gram, xy, n_nonzero_coefs=n).reshape(-1, len(signals)).T
            for n in range(1, n_nonzero + 1)
        ]
    orders = []
    for b in range(len(signals)):
        order, seen = [], set()
        for coef in coefs:
            new = set(np.flatnonzero(coef[b]).tolist()) - seen
            order.extend(sorted(new))  # one new atom per step unless it stopped
            seen |= new
        orders.append(order)
    return coefs[-1], orders


def reference_omp(dictionary, signal, n_nonzero, *, selection="abs", allowed=None):
    """Plain numpy OMP, SGFR Algorithm 1: select (eq. 3), fit (eq. 4), residual (eq. 5).

    Returns the ordered support, the (K,) coefficients and, per step, the gap between
    the best and the second-best selection score (how stable the selection is).
    """
    num_atoms = dictionary.shape[1]
    available = np.ones(num_atoms, bool) if allowed is None else allowed.copy()
    support, gaps = [], []
    coef_s = np.zeros(0)
    residual = signal.copy()
    for _ in range(n_nonzero):
        corr = dictionary.T @ residual
        score = np.abs(corr) if selection == "abs" else corr  # eq. 3
        score = np.where(available, score, -np.inf)
        first, second = np.argsort(score)[::-1][:2]
        if score[first] == -np.inf:  # no atom left
            break
        gaps.append(score[first] - score[second])
        support.append(first)
        available[first] = False
        sub = dictionary[:, support]
        coef_s = np.linalg.lstsq(sub, signal, rcond=None)[0]  # eq. 4
        residual = signal - sub @ coef_s  # eq. 5
    coef = np.zeros(num_atoms)
    coef[support] = coef_s
    return support, coef, gaps


def padded_problem(rng, m, num_atoms, num_signals=_B):
    """A random (m, K) unit-norm problem zero-padded to the standard (_M, _K) shape."""
    dictionary = np.zeros((_M, _K))
    dictionary[:m, :num_atoms] = random_dictionary_np(rng, m, num_atoms)
    signals = np.zeros((num_signals, _M))
    signals[:, :m] = rng.standard_normal((num_signals, m)) * rng.uniform(
        0.5, 3.0, (num_signals, 1)
    )
    return dictionary, signals


def assert_valid_support(support, n_iter):
    """-1 exactly after n_iter, distinct atoms before."""
    for row, n in zip(
        support.reshape(-1, support.shape[-1]), n_iter.ravel(), strict=True
    ):
        assert np.all(row[:n] >= 0) and np.all(row[n:] == -1), (row, n)
        assert len(set(row[:n].tolist())) == n, row


# ------------------------------------------------------------ 1. scikit-learn reference


@pytest.mark.parametrize("seed", range(30))
def test_omp_and_omp_gram_match_sklearn_float64(seed):
    rng = np.random.default_rng(seed)
    n_nonzero = int(rng.choice(_SPARSITIES))
    m = int(rng.integers(n_nonzero + 3, _M + 1))  # s < m: no exact fit (sklearn warns)
    num_atoms = int(rng.integers(n_nonzero + 1, _K + 1))
    dictionary, signals = padded_problem(rng, m, num_atoms)
    want_coef, want_order = sklearn_omp(
        dictionary[:m, :num_atoms], signals[:, :m], n_nonzero
    )
    want_residual = np.linalg.norm(
        signals[:, :m] - want_coef @ dictionary[:m, :num_atoms].T, axis=-1
    )
    with jax.enable_x64(True):
        got = run_omp(dictionary, signals, n_nonzero)
        got_gram = run_omp_gram(dictionary, signals, n_nonzero)
    for res in (got, got_gram):
        assert res.coef.dtype == np.float64
        np.testing.assert_array_equal(res.n_iter, n_nonzero)
        np.testing.assert_array_equal(res.coef[:, num_atoms:], 0.0)  # zero atoms
        for b in range(_B):
            np.testing.assert_array_equal(res.support[b], want_order[b])
            np.testing.assert_array_equal(
                np.sort(np.flatnonzero(res.coef[b])), np.sort(want_order[b])
            )
        # float64, both Cholesky solves on well-conditioned random supports: the
        # coefficients agree to rounding (~1e-14); 1e-10 leaves room for cond(D_S).
        np.testing.assert_allclose(
            res.coef[:, :num_atoms], want_coef, rtol=1e-10, atol=1e-10
        )
    # omp computes ‖y - Dc‖ directly (1e-10 as above); omp_gram via ‖y‖² - cᵀDᵀy, which
    # loses ~eps·‖y‖²/‖e‖ (‖y‖ <= ~20, ‖e‖ >= ~0.1 here): 1e-8.
    np.testing.assert_allclose(got.residual_norm, want_residual, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_gram.residual_norm, want_residual, atol=1e-8)


@pytest.mark.parametrize("n_nonzero", [16, 27, 70])
def test_multi_phase_pursuit_matches_sklearn_float64(n_nonzero):
    # Sparsities from 16 on run the greedy loop in several phases (2, 3 and 8 here,
    # 70 with uneven phase lengths); the result must not depend on the phase layout.
    omp_module = importlib.import_module("jad.sparse.omp")
    assert len(omp_module._phase_bounds(n_nonzero)) - 1 > 1
    rng = np.random.default_rng(n_nonzero)
    m, num_atoms = n_nonzero + 12, n_nonzero + 30
    dictionary = rng.standard_normal((m, num_atoms))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    signals = rng.standard_normal((6, m))
    want_coef, want_order = sklearn_omp(dictionary, signals, n_nonzero)
    with jax.enable_x64(True):
        got = omp(dictionary, signals, n_nonzero)
    np.testing.assert_array_equal(got.support, want_order)
    np.testing.assert_allclose(got.coef, want_coef, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------- 2. planted recovery


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_omp_recovers_planted_sparse_signals(dtype):
    rng = np.random.default_rng(2)
    m, num_atoms, n_nonzero, num_signals = 64, 128, 5, 16
    dictionary = random_dictionary_np(rng, m, num_atoms)
    planted = np.zeros((num_signals, num_atoms))
    supports = []
    for b in range(num_signals):
        support = np.sort(rng.choice(num_atoms, n_nonzero, replace=False))
        # |c| in [1, 2]: bounded away from 0, dynamic range 2 (OMP's recovery regime).
        planted[b, support] = rng.uniform(1.0, 2.0, n_nonzero) * rng.choice(
            [-1.0, 1.0], n_nonzero
        )
        supports.append(support)
    signals = planted @ dictionary.T
    with x64_if(dtype):
        got = run_omp(dictionary.astype(dtype), signals.astype(dtype), n_nonzero)
    assert got.coef.dtype == dtype
    for b in range(num_signals):
        np.testing.assert_array_equal(np.sort(got.support[b]), supports[b])
    # Exact fits: the error is rounding of the inputs and of a 5x5 solve (cond ~2).
    # float32 1e-5 relative to |c| <= 2; float64 1e-10.
    atol = loosen(1e-5) if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got.coef, planted, atol=2 * atol)
    np.testing.assert_array_less(got.residual_norm, 10 * atol * np.sqrt(m))


# ------------------------------------------------------------------ 3. tolerance stop


def test_tol_stops_early_pads_support_and_matches_sklearn(x64):
    rng = np.random.default_rng(3)
    n_nonzero = 5
    dictionary, signals = padded_problem(rng, _M, _K)
    full = run_omp(dictionary, signals, n_nonzero)
    # Residual norms after 0..s atoms, from numpy least squares on the prefixes.
    norms = np.array(
        [
            [
                np.linalg.norm(
                    y
                    - dictionary[:, s[:k]]
                    @ np.linalg.lstsq(dictionary[:, s[:k]], y, rcond=None)[0]
                )
                for k in range(n_nonzero + 1)
            ]
            for y, s in zip(signals, full.support, strict=True)
        ]
    )
    # OMP is scale invariant (same supports, norms scale): scale each signal so that
    # tol = 1 falls between its residual norms after k-1 and k atoms, k = 3, 1, 0,
    # and after the last one for signal 2 (which then never reaches tol).
    tol = 1.0
    scales = np.array(
        [
            1 / np.sqrt(norms[0, 2] * norms[0, 3]),
            1 / np.sqrt(norms[1, 0] * norms[1, 1]),
            2 / norms[2, n_nonzero],
            0.5 / norms[3, 0],
        ]
    )
    signals *= scales[:, None]
    norms *= scales[:, None]
    expected = np.array(
        [
            min([k for k in range(n_nonzero + 1) if r[k] <= tol] + [n_nonzero])
            for r in norms
        ]
    )
    np.testing.assert_array_equal(expected, [3, 1, n_nonzero, 0])  # the intended setup
    # No residual within 1e-6 of tol: the stop is decided by the maths, not rounding.
    assert np.min(np.abs(norms - tol)) > 1e-6

    got = run_omp(dictionary, signals, n_nonzero, tol=tol)
    np.testing.assert_array_equal(got.n_iter, expected)
    assert_valid_support(got.support, got.n_iter)
    stopped = expected < n_nonzero
    # A stopped signal's residual is <= tol (1e-12: it is recomputed as ‖y - Dc‖).
    assert np.all(got.residual_norm[stopped] <= tol + 1e-12)
    assert got.residual_norm[2] > tol
    for b in range(_B):
        n = expected[b]
        np.testing.assert_array_equal(got.support[b, :n], full.support[b, :n])
    np.testing.assert_array_equal(got.coef[3], 0.0)  # ‖y‖ <= tol: nothing selected

    # scikit-learn's tol (on the squared norm) gives the same codes where tol stops
    # after >= 1 atom (it always selects a first atom, and ignores n_nonzero).
    compare = (expected >= 1) & stopped
    want_coef, _ = sklearn_omp(dictionary, signals[compare], n_nonzero, tol=tol)
    # float64 Cholesky vs Cholesky, as in the sklearn test.
    np.testing.assert_allclose(got.coef[compare], want_coef, rtol=1e-10, atol=1e-10)

    # Each signal alone (its batch-mates replaced by zero signals, which stop at once)
    # gives the same result as in the full batch: a stopped signal is not changed by
    # the others' iterations. Same compiled program: exact equality.
    for b in range(_B):
        alone = np.zeros_like(signals)
        alone[b] = signals[b]
        alone = run_omp(dictionary, alone, n_nonzero, tol=tol)
        np.testing.assert_array_equal(alone.n_iter[b], got.n_iter[b])
        np.testing.assert_array_equal(alone.support[b], got.support[b])
        np.testing.assert_array_equal(alone.coef[b], got.coef[b])
        np.testing.assert_array_equal(alone.residual_norm[b], got.residual_norm[b])
        np.testing.assert_array_equal(np.delete(alone.n_iter, b), 0)


# ------------------------------------------------------------------------ 4. atom_mask


def test_atom_mask_per_signal_matches_sklearn_on_allowed_atoms(x64):
    rng = np.random.default_rng(4)
    n_nonzero = 5
    dictionary, signals = padded_problem(rng, _M, _K)
    mask = rng.random((_B, _K)) < 0.5
    mask[3] = False  # nothing allowed: nothing selected
    got = run_omp(dictionary, signals, n_nonzero, atom_mask=mask)
    assert_valid_support(got.support, got.n_iter)
    for b in range(3):
        allowed = np.flatnonzero(mask[b])
        assert set(got.support[b].tolist()) <= set(allowed.tolist())
        want_coef, want_order = sklearn_omp(
            dictionary[:, allowed], signals[b : b + 1], n_nonzero
        )
        np.testing.assert_array_equal(got.support[b], allowed[want_order[0]])
        # float64 Cholesky vs Cholesky, as in the sklearn test.
        np.testing.assert_allclose(
            got.coef[b, allowed], want_coef[0], rtol=1e-10, atol=1e-10
        )
        np.testing.assert_array_equal(got.coef[b, ~mask[b]], 0.0)
    assert got.n_iter[3] == 0
    np.testing.assert_array_equal(got.support[3], -1)
    np.testing.assert_array_equal(got.coef[3], 0.0)
    # Nothing selected: the residual is the signal (1e-12: a norm of the same numbers).
    np.testing.assert_allclose(
        got.residual_norm[3], np.linalg.norm(signals[3]), rtol=1e-12
    )


def test_atom_mask_broadcast_and_fewer_allowed_than_n_nonzero(x64):
    rng = np.random.default_rng(5)
    n_nonzero = 5
    dictionary, signals = padded_problem(rng, _M, _K)
    mask = rng.random(_K) < 0.3
    shared = run_omp(dictionary, signals, n_nonzero, atom_mask=mask)  # (K,) mask
    tiled = run_omp(
        dictionary, signals, n_nonzero, atom_mask=np.broadcast_to(mask, (_B, _K))
    )
    for a, b in zip(shared, tiled, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(shared.support.ravel().tolist()) <= set(np.flatnonzero(mask).tolist())

    allowed = np.array([3, 17, 40])  # r = 3 < s = 5
    few = np.zeros((_B, _K), bool)
    few[:, allowed] = True
    got = run_omp(dictionary, signals, n_nonzero, atom_mask=few)
    assert np.all(got.n_iter <= len(allowed))
    # Generic signals use every allowed atom, then stop (no allowed atom left).
    np.testing.assert_array_equal(got.n_iter, len(allowed))
    assert_valid_support(got.support, got.n_iter)
    for b in range(_B):
        assert set(got.support[b, :3].tolist()) == set(allowed.tolist())
        want = np.linalg.lstsq(dictionary[:, allowed], signals[b], rcond=None)[0]
        # float64 least squares on 3 random unit atoms (cond ~1-3).
        np.testing.assert_allclose(got.coef[b, allowed], want, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ 5. signed selection


def test_signed_selection_is_argmax_without_abs(x64):
    rng = np.random.default_rng(6)
    n_nonzero = 5
    dictionary, signals = padded_problem(rng, _M, _K)
    # Signal 0: strongly anti-correlated with atom 7, so the largest |corr| is negative.
    signals[0] = -3.0 * dictionary[:, 7] + 0.8 * dictionary[:, 21]
    corr = dictionary.T @ signals[0]
    abs_first, signed_first = int(np.argmax(np.abs(corr))), int(np.argmax(corr))
    assert abs_first == 7 and corr[7] < 0 and signed_first != 7  # the intended setup

    by_abs = run_omp(dictionary, signals, n_nonzero, selection="abs")
    signed = run_omp(dictionary, signals, n_nonzero, selection="signed")
    assert by_abs.support[0, 0] == abs_first
    assert signed.support[0, 0] == signed_first
    for b in range(_B):
        support, coef, _ = reference_omp(
            dictionary, signals[b], n_nonzero, selection="signed"
        )
        np.testing.assert_array_equal(signed.support[b], support)
        # float64 Cholesky vs numpy lstsq on 5 random atoms.
        np.testing.assert_allclose(signed.coef[b], coef, rtol=1e-10, atol=1e-10)

    # All correlations negative: "signed" still takes the least negative atom, never
    # one of the zero (padding) atoms whose score 0 would be larger.
    dictionary, signals = padded_problem(rng, _M, 3)
    signals = -np.abs(rng.normal(1.0, 0.1, (_B, 3))) @ dictionary[:, :3].T
    signals += 0.01 * rng.standard_normal(signals.shape)
    assert np.all(signals @ dictionary[:, :3] < 0)  # the intended setup
    signed = run_omp(dictionary, signals, n_nonzero, selection="signed")
    np.testing.assert_array_equal(signed.n_iter, 3)  # no atom left after 3
    for b in range(_B):
        allowed = np.arange(_K) < 3
        support, coef, _ = reference_omp(
            dictionary, signals[b], n_nonzero, selection="signed", allowed=allowed
        )
        np.testing.assert_array_equal(signed.support[b, :3], support)
        # float64 Cholesky vs numpy lstsq on 3 random atoms.
        np.testing.assert_allclose(signed.coef[b], coef, rtol=1e-10, atol=1e-10)


def test_signed_selection_goes_on_when_the_best_signed_atom_drops_nothing(x64):
    # Orthonormal atoms, y = d0 - 0.5 d1 + tiny positive parts on d2..d4: after d0
    # the signed best atoms (d4, d3, d2) lower ‖e‖² by ~1e-18 only, while d1 still
    # correlates at -0.5. SGFR Algorithm 1 takes them and then d1, down to an exact
    # fit; stopping at the first negligible drop would leave d1 out of the support.
    rng = np.random.default_rng(11)
    dictionary = np.linalg.qr(rng.standard_normal((8, 5)))[0]
    signal = dictionary @ np.array([1.0, -0.5, 1e-9, 2e-9, 3e-9])
    want, coef, _ = reference_omp(dictionary, signal, 5, selection="signed")
    assert want == [0, 4, 3, 2, 1]  # the intended setup
    for got in (run_omp(dictionary, signal[None], 5, selection="signed"),
                run_omp_gram(dictionary, signal[None], 5, selection="signed")):
        np.testing.assert_array_equal(got.support[0], want)
        np.testing.assert_allclose(got.coef[0], coef, rtol=1e-6, atol=1e-12)


def test_signed_selection_skips_atoms_in_the_span_of_the_chosen_ones(x64):
    # A duplicate atom (the same image twice in a memory bank) correlates at 0 once
    # its twin is chosen, above every negative correlation: the pursuit must go on
    # with the negatively correlated atom rather than stop at the duplicate.
    rng = np.random.default_rng(12)
    d0, d1 = np.linalg.qr(rng.standard_normal((8, 2)))[0].T
    dictionary = np.stack([d0, d0, d1], axis=1)
    signal = d0 - 0.5 * d1
    for got in (run_omp(dictionary, signal[None], 3, selection="signed"),
                run_omp_gram(dictionary, signal[None], 3, selection="signed")):
        assert got.support[0, 0] in (0, 1) and got.support[0, 1] == 2
        np.testing.assert_allclose(dictionary @ got.coef[0], signal, atol=1e-10)


# ------------------------------------------------------------- 6. jit and vmap


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_jit_equals_no_jit(transform, x64):
    rng = np.random.default_rng(7)
    m, num_atoms, n_nonzero = 10, 16, 3
    dictionary = random_dictionary_np(rng, m, num_atoms)
    signals = rng.standard_normal((2, m))
    want_coef, want_order = sklearn_omp(dictionary, signals, n_nonzero)
    run = transform(functools.partial(omp, n_nonzero=n_nonzero))
    run_gram = transform(functools.partial(omp_gram, n_nonzero=n_nonzero))
    got = run(dictionary, signals)
    got_gram = run_gram(
        dictionary.T @ dictionary,
        signals @ dictionary,
        norms_squared=np.sum(signals**2, -1),
    )
    for res in (got, got_gram):
        np.testing.assert_array_equal(res.support, want_order)
        # float64 Cholesky vs Cholesky (see the sklearn test).
        np.testing.assert_allclose(res.coef, want_coef, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            res.residual_norm,
            np.linalg.norm(signals - want_coef @ dictionary.T, axis=-1),
            rtol=1e-8,  # omp_gram's ‖y‖² - cᵀDᵀy form loses a few digits
        )


def test_vmap_over_dictionaries_equals_python_loop(x64):
    rng = np.random.default_rng(8)
    n_nonzero, num = 5, 3
    problems = [padded_problem(rng, _M, _K) for _ in range(num)]
    dictionaries = np.stack([d for d, _ in problems])
    signals = np.stack([y for _, y in problems])
    masks = rng.random((num, _B, _K)) < 0.7

    batched = jax.jit(
        jax.vmap(lambda d, y, mask: omp(d, y, n_nonzero, atom_mask=mask))
    )(dictionaries, signals, masks)
    batched = _to_numpy(batched)
    for i in range(num):
        alone = run_omp(dictionaries[i], signals[i], n_nonzero, atom_mask=masks[i])
        np.testing.assert_array_equal(batched.support[i], alone.support)
        np.testing.assert_array_equal(batched.n_iter[i], alone.n_iter)
        # Same maths, batched vs unbatched matmuls: rounding only.
        np.testing.assert_allclose(batched.coef[i], alone.coef, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            batched.residual_norm[i], alone.residual_norm, rtol=1e-12, atol=1e-12
        )


# ----------------------------------------------------------------------- 7. gradients


def _separated_problem():
    """Tiny float64 problem whose greedy choices win by a wide margin at every step."""
    rng = np.random.default_rng(9)
    m, num_atoms, n_nonzero = 8, 10, 2
    dictionary = random_dictionary_np(rng, m, num_atoms)
    signals = np.stack(
        [
            2.0 * dictionary[:, 1] - 1.5 * dictionary[:, 6],
            -1.8 * dictionary[:, 4] + 1.2 * dictionary[:, 8],
        ]
    )
    signals += 0.1 * rng.standard_normal(signals.shape)  # a non-zero residual
    supports = []
    for y in signals:
        support, _, gaps = reference_omp(dictionary, y, n_nonzero)
        # Finite differences move scores by ~1e-4: a gap of 0.1 keeps the support.
        assert min(gaps) > 0.1, gaps
        supports.append(support)
    return dictionary, signals, n_nonzero, supports


def test_gradients_match_finite_differences(x64):
    dictionary, signals, n_nonzero, _ = _separated_problem()

    def outputs(d, y):
        res = omp(d, y, n_nonzero)
        return res.residual_norm.sum(), res.coef

    # check_grads' float64 defaults: atol = rtol = 1e-5 against eps = 1e-4 central
    # differences in a random direction (smooth functions on the fixed support).
    check_grads(
        jax.jit(outputs),
        (jnp.asarray(dictionary), jnp.asarray(signals)),
        order=1,
        modes=["fwd", "rev"],
    )


def test_gradient_wrt_signals_and_dictionary_closed_form(x64):
    dictionary, signals, n_nonzero, supports = _separated_problem()
    # A zero signal too (empty support): its gradients must be 0, not NaN (‖0‖).
    signals = np.concatenate([signals, np.zeros_like(signals[:1])])
    supports = [*supports, []]

    def half_sq_residual(d, y):
        return 0.5 * jnp.sum(omp(d, y, n_nonzero).residual_norm ** 2)

    grad_d, grad_y = jax.jit(jax.grad(half_sq_residual, argnums=(0, 1)))(
        jnp.asarray(dictionary), jnp.asarray(signals)
    )
    m = dictionary.shape[0]
    want_d = np.zeros_like(dictionary)
    for b, (y, support) in enumerate(zip(signals, supports, strict=True)):
        sub = dictionary[:, support]
        projector = sub @ np.linalg.pinv(sub) if support else np.zeros((m, m))  # P_S
        # d/dy ½‖(I - P_S) y‖² = (I - P_S) y; float64 projector of 2 atoms: 1e-10.
        np.testing.assert_allclose(
            grad_y[b], (np.eye(m) - projector) @ y, rtol=1e-10, atol=1e-10
        )
        # d/dD ½‖y - D_S c*‖² = -e c*ᵀ (c* optimal: envelope theorem); 0 off support.
        c = np.zeros(dictionary.shape[1])
        c[support] = np.linalg.pinv(sub) @ y if support else []
        want_d -= np.outer(y - dictionary @ c, c)
    np.testing.assert_allclose(grad_d, want_d, rtol=1e-10, atol=1e-10)

    # The code's derivative: dc_S/dy = (D_SᵀD_S)⁻¹D_Sᵀ = pinv(D_S), 0 off the support
    # and across signals. This is what the envelope identities above cannot see.
    jacobian = jax.jit(jax.jacrev(lambda y: omp(dictionary, y, n_nonzero).coef))(
        jnp.asarray(signals)
    )  # (B, K, B, m)
    want = np.zeros(jacobian.shape)
    for b, support in enumerate(supports[:2]):
        want[b, support, b] = np.linalg.pinv(dictionary[:, support])
    # float64 pseudo-inverse of 2 atoms: 1e-10.
    np.testing.assert_allclose(jacobian, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- 8. robustness


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_duplicate_and_dependent_atoms(dtype):
    rng = np.random.default_rng(10)
    n_nonzero = 5
    dictionary, signals = padded_problem(rng, _M, _K)
    dictionary[:, 1] = dictionary[:, 0]  # duplicated atom
    dependent = dictionary[:, 3] + dictionary[:, 4]
    dictionary[:, 2] = dependent / np.linalg.norm(dependent)  # in span{3, 4}
    signals[0] = 0.0
    signals[1] = 2.0 * dictionary[:, 0] + dictionary[:, 5] - dictionary[:, 7]
    signals[2] = dictionary[:, 2] - 0.5 * dictionary[:, 3] + 0.3 * dictionary[:, 10]
    # signals[3]: generic, over a dictionary with duplicated and dependent atoms.
    dictionary, signals = dictionary.astype(dtype), signals.astype(dtype)
    with x64_if(dtype):
        got = run_omp(dictionary, signals, n_nonzero)
    for x in (got.coef, got.residual_norm):
        assert np.all(np.isfinite(x))
    assert got.coef.dtype == dtype
    assert_valid_support(got.support, got.n_iter)
    # Zero signal: nothing selected, zero code and residual (its zero gradient is
    # checked in the closed-form gradient test).
    assert got.n_iter[0] == 0
    np.testing.assert_array_equal(got.support[0], -1)
    np.testing.assert_array_equal(got.coef[0], 0.0)
    assert got.residual_norm[0] == 0.0
    for b in range(1, _B):
        support = set(got.support[b, : got.n_iter[b]].tolist())
        assert not {0, 1} <= support  # never both copies of an atom
        assert not {2, 3, 4} <= support  # never a dependent triple
    # Rounding of the inputs and of a 3-atom solve: float32 1e-5, float64 1e-10.
    eps = loosen(1e-5) if dtype == np.float32 else 1e-10
    want_residual = np.linalg.norm(
        signals.astype(np.float64) - got.coef.astype(np.float64) @ dictionary.T, axis=-1
    )
    np.testing.assert_allclose(got.residual_norm, want_residual, rtol=eps, atol=eps)
    # Signals 1 and 2 lie in the span of 3 atoms: OMP fits them exactly.
    np.testing.assert_array_less(got.residual_norm[1:3], 10 * eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_n_nonzero_above_rank_stops_at_rank(dtype):
    rng = np.random.default_rng(11)
    m, num_atoms, n_nonzero = 2, 12, 5  # m < n_nonzero <= K
    dictionary, signals = padded_problem(rng, m, num_atoms)
    dictionary, signals = dictionary.astype(dtype), signals.astype(dtype)
    with x64_if(dtype):
        got = run_omp(dictionary, signals, n_nonzero)
    assert np.all(np.isfinite(got.coef)) and np.all(np.isfinite(got.residual_norm))
    assert_valid_support(got.support, got.n_iter)
    # The span is R^m after m independent atoms; a further atom is dependent.
    np.testing.assert_array_equal(got.n_iter, m)
    np.testing.assert_array_equal(got.coef[:, num_atoms:], 0.0)
    # y is in the span: the residual is rounding (float32 1e-5, float64 1e-10 times ‖y‖,
    # the 2x2 random solves have cond ~10).
    eps = loosen(1e-5) if dtype == np.float32 else 1e-10
    norms = np.linalg.norm(signals.astype(np.float64), axis=-1)
    np.testing.assert_array_less(got.residual_norm, 10 * eps * norms)
    want_residual = np.linalg.norm(
        signals.astype(np.float64) - got.coef.astype(np.float64) @ dictionary.T, axis=-1
    )
    np.testing.assert_allclose(
        got.residual_norm, want_residual, atol=10 * eps * norms.max()
    )
    # The code reproduces y: D c = y up to the same rounding.
    np.testing.assert_allclose(
        got.coef.astype(np.float64) @ dictionary.T, signals, atol=10 * eps * norms.max()
    )


# ------------------------------------------------------------------------ 9. bad input


def _inputs():
    rng = np.random.default_rng(12)
    dictionary = random_dictionary_np(rng, 6, 8).astype(np.float32)
    signals = rng.standard_normal((3, 6)).astype(np.float32)
    return dictionary, signals


def _case(name, call, error, match):
    return pytest.param(call, error, match, id=name)


_BAD_INPUTS = [
    _case("dictionary-rows", lambda d, y: omp(d[:5], y, 2), ValueError, "dictionary"),
    _case("dictionary-1d", lambda d, y: omp(d[:, 0], y, 2), ValueError, "dictionary"),
    _case(
        "signals-nan",
        lambda d, y: omp(d, np.where(y == y[1, 2], np.nan, y), 2),
        ValueError,
        "signals",
    ),
    _case(
        "signals-inf",
        lambda d, y: omp(d, np.full_like(y, np.inf), 2),
        ValueError,
        "signals",
    ),
    _case(
        "dictionary-nan",
        lambda d, y: omp(np.full_like(d, np.nan), y, 2),
        ValueError,
        "dictionary",
    ),
    _case("n_nonzero-0", lambda d, y: omp(d, y, 0), ValueError, "n_nonzero"),
    _case("n_nonzero-K+1", lambda d, y: omp(d, y, 9), ValueError, "n_nonzero"),
    _case("n_nonzero-float", lambda d, y: omp(d, y, 2.0), TypeError, "n_nonzero"),
    _case("n_nonzero-bool", lambda d, y: omp(d, y, True), TypeError, "n_nonzero"),
    _case(
        "dictionary-int",
        lambda d, y: omp(d.astype(np.int32), y, 2),
        TypeError,
        "dictionary",
    ),
    _case(
        "signals-int", lambda d, y: omp(d, y.astype(np.int64), 2), TypeError, "signals"
    ),
    _case(
        "atom_mask-float",
        lambda d, y: omp(d, y, 2, atom_mask=np.ones(8)),
        TypeError,
        "atom_mask",
    ),
    _case(
        "atom_mask-shape",
        lambda d, y: omp(d, y, 2, atom_mask=np.ones(7, bool)),
        ValueError,
        "atom_mask",
    ),
    _case(
        "selection-unknown",
        lambda d, y: omp(d, y, 2, selection="max"),
        ValueError,
        "selection",
    ),
    _case("tol-negative", lambda d, y: omp(d, y, 2, tol=-1.0), ValueError, "tol"),
    _case("tol-nan", lambda d, y: omp(d, y, 2, tol=np.nan), ValueError, "tol"),
    _case(
        "gram-tol-without-norms",
        lambda d, y: omp_gram(d.T @ d, y @ d, 2, tol=0.1),
        ValueError,
        "norms_squared",
    ),
    _case(
        "gram-xy-mismatch",
        lambda d, y: omp_gram(d.T @ d, y @ d[:, :7], 2),
        ValueError,
        "gram",
    ),
    _case(
        "gram-n_nonzero-K+1",
        lambda d, y: omp_gram(d.T @ d, y @ d, 9),
        ValueError,
        "n_nonzero",
    ),
    _case(
        "gram-norms-shape",
        lambda d, y: omp_gram(d.T @ d, y @ d, 2, norms_squared=np.ones(2, np.float32)),
        ValueError,
        "norms_squared",
    ),
    _case(
        "gram-norms-nan",
        lambda d, y: omp_gram(d.T @ d, y @ d, 2, norms_squared=np.full(3, np.nan)),
        ValueError,
        "norms_squared",
    ),
    _case(
        "gram-norms-negative",
        lambda d, y: omp_gram(
            d.T @ d, y @ d, 2, norms_squared=np.array([1.0, -1.0, 2.0], np.float32)
        ),
        ValueError,
        "omp_gram: norms_squared must be >= 0",
    ),
    _case(
        "dictionary-no-atoms",
        lambda d, y: omp(d[:, :0], y, 1),
        ValueError,
        r"omp: dictionary must hold at least one atom \(K >= 1\); got shape \(6, 0\)",
    ),
    _case(
        "gram-no-atoms",
        lambda d, y: omp_gram(np.zeros((0, 0), np.float32), y[:, :0], 1),
        ValueError,
        "omp_gram: gram must hold at least one atom",
    ),
    _case("tol-str", lambda d, y: omp(d, y, 2, tol="0.1"), TypeError, "omp: tol"),
    _case("tol-none", lambda d, y: omp(d, y, 2, tol=None), TypeError, "omp: tol"),
    _case("tol-complex", lambda d, y: omp(d, y, 2, tol=1j), TypeError, "omp: tol"),
    _case(
        "tol-shape", lambda d, y: omp(d, y, 2, tol=np.ones(2)), ValueError, "omp: tol"
    ),
    _case(
        "gram-tol-str",
        lambda d, y: omp_gram(d.T @ d, y @ d, 2, tol="a"),
        TypeError,
        "omp_gram: tol",
    ),
    _case(
        "atom_mask-str",
        lambda d, y: omp(d, y, 2, atom_mask="all"),
        TypeError,
        "omp: atom_mask",
    ),
]


@pytest.mark.parametrize("call, error, match", _BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(call, error, match):
    dictionary, signals = _inputs()
    with pytest.raises(error, match=match):
        call(dictionary, signals)


def test_shape_errors_also_raise_under_jit():
    dictionary, signals = _inputs()
    with pytest.raises(ValueError, match="dictionary"):
        jax.jit(functools.partial(omp, n_nonzero=2))(dictionary[:5], signals)
    with pytest.raises(ValueError, match="n_nonzero"):
        jax.jit(functools.partial(omp, n_nonzero=9))(dictionary, signals)
    with pytest.raises(ValueError, match="omp: tol must be a scalar"):
        jax.jit(lambda d, y, t: omp(d, y, 2, tol=t))(dictionary, signals, np.ones(2))
    with pytest.raises(ValueError, match="omp: dictionary must hold at least one"):
        jax.jit(functools.partial(omp, n_nonzero=1))(dictionary[:, :0], signals)


# -------------------------------------------------------------------------- 10. docs


def test_docstring_examples_run():
    module = importlib.import_module("jad.sparse.omp")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_fit_stops_at_planted_sparsity_with_default_tol(dtype):
    # Regression: with tol=0 the pursuit used to go on adding rounding-level atoms
    # after an exact fit. Planted k in 1..3 atoms, s = 8: n_iter must equal k.
    rng = np.random.default_rng(0)
    dictionary = random_dictionary_np(rng, 20, 40)
    codes = np.zeros((60, 40))
    for i in range(60):
        k = rng.integers(1, 4)
        codes[i, rng.choice(40, k, replace=False)] = rng.uniform(1, 2, k) * rng.choice(
            [-1, 1], k
        )
    signals = codes @ dictionary.T
    with x64_if(dtype):
        got = omp(dictionary.astype(dtype), signals.astype(dtype), 8)
        gram = omp_gram(
            (dictionary.T @ dictionary).astype(dtype),
            (signals @ dictionary).astype(dtype),
            8,
        )
    found = np.array(
        [
            set(np.flatnonzero(got.coef[i])) == set(np.flatnonzero(codes[i]))
            for i in range(60)
        ]
    )
    assert found.mean() > 0.9  # OMP recovers most supports of this easy problem
    planted_k = (codes != 0).sum(1)
    np.testing.assert_array_equal(np.asarray(got.n_iter)[found], planted_k[found])
    np.testing.assert_array_equal(np.asarray(gram.n_iter)[found], planted_k[found])
    assert np.all(np.asarray(got.support)[found][:, 3:] == -1)


# ------------------------------------------------- 11. scale, dtypes, m = 0, NaN


@pytest.mark.parametrize("exponent", [64, -70])
def test_omp_is_exact_for_signals_whose_squared_norm_overflows_or_underflows(
    exponent,
):
    # float32 signals scaled by 2^64 (values ~1e19, ‖y‖² overflows) or 2^-70 (‖y‖²
    # underflows) used to give zero codes and an infinite (or zero) residual. OMP
    # is scale-equivariant and powers of two scale floats exactly, so the result
    # must be the unscaled one, scaled, bit for bit.
    rng = np.random.default_rng(30)
    dictionary, signals = padded_problem(rng, 20, 30)
    dictionary, signals = dictionary.astype(np.float32), signals.astype(np.float32)
    scale = np.float32(2.0**exponent)
    plain = run_omp(dictionary, signals, 5)
    scaled = run_omp(dictionary, signals * scale, 5)
    np.testing.assert_array_equal(scaled.support, plain.support)
    np.testing.assert_array_equal(scaled.n_iter, plain.n_iter)
    np.testing.assert_array_equal(scaled.coef, plain.coef * scale)
    np.testing.assert_array_equal(scaled.residual_norm, plain.residual_norm * scale)
    assert np.all(plain.n_iter == 5)


def test_omp_codes_signals_of_2e19_in_float32():
    signal = np.array([2e19, 1e19, 0.0, -3e18], np.float32)
    got = omp(np.eye(4, dtype=np.float32), signal, 3)
    np.testing.assert_array_equal(got.coef, signal)
    assert got.support.tolist() == [0, 1, 3]
    assert float(got.residual_norm) == 0.0


def test_omp_dictionary_scale_only_rescales_the_codes():
    # Atoms of ~1e20 (DᵀD overflows float32) or ~1e-25 (DᵀD underflows).
    rng = np.random.default_rng(31)
    dictionary, signals = padded_problem(rng, 20, 30)
    dictionary, signals = dictionary.astype(np.float32), signals.astype(np.float32)
    plain = run_omp(dictionary, signals, 5)
    for exponent in (66, -84):
        scale = np.float32(2.0**exponent)
        scaled = run_omp(dictionary * scale, signals, 5)
        np.testing.assert_array_equal(scaled.support, plain.support)
        np.testing.assert_array_equal(scaled.coef, plain.coef / scale)
        np.testing.assert_array_equal(scaled.residual_norm, plain.residual_norm)


def test_omp_gram_is_exact_for_huge_and_tiny_correlations():
    # xy ~ 1e19 (xy² overflows float32) or ~1e-20 (xy² underflows) used to stop the
    # pursuit at once with zero codes.
    rng = np.random.default_rng(32)
    dictionary, signals = padded_problem(rng, 20, 30)
    gram = (dictionary.T @ dictionary).astype(np.float32)
    xy = (signals @ dictionary).astype(np.float32)
    norms = np.sum(signals**2, axis=-1).astype(np.float32)
    plain = omp_gram(gram, xy, 5, norms_squared=norms)
    assert np.all(np.asarray(plain.n_iter) == 5)
    for exponent in (64, -66):
        scale = np.float32(2.0**exponent)
        got = omp_gram(gram, xy * scale, 5)
        np.testing.assert_array_equal(got.support, plain.support)
        np.testing.assert_array_equal(got.coef, np.asarray(plain.coef) * scale)
    for exponent in (40, -40):  # consistent norms: ‖y‖² scales by the square
        scale = np.float32(2.0**exponent)
        got = omp_gram(gram, xy * scale, 5, norms_squared=norms * scale * scale)
        np.testing.assert_array_equal(got.coef, np.asarray(plain.coef) * scale)
        np.testing.assert_array_equal(
            got.residual_norm, np.asarray(plain.residual_norm) * scale
        )
    # A Gram matrix of atoms of norm ~2^70 (DᵀD ~ 1e42 would overflow; given here
    # as 2^100 with codes scaled by 2^-50).
    got = omp_gram(gram * np.float32(2.0**100), xy * np.float32(2.0**50), 5)
    np.testing.assert_array_equal(got.coef, np.asarray(plain.coef) * 2.0**-50)


def test_scaled_pursuit_keeps_jit_vmap_and_gradients(x64):
    # loss_scaled is loss evaluated through signals 2^80 times larger and scaled
    # back: equal values, so equal gradients (w.r.t. signals and dictionary), also
    # under jit; the power-of-two scales inside omp must not leak into them.
    dictionary, signals, n_nonzero, _ = _separated_problem()
    scale = 2.0**80

    def loss(y, d):
        res = omp(d, y, n_nonzero)
        return jnp.sum(res.residual_norm) + jnp.sum(jnp.tanh(res.coef))

    def loss_scaled(y, d):
        res = omp(d, y * scale, n_nonzero)
        return jnp.sum(res.residual_norm) / scale + jnp.sum(jnp.tanh(res.coef / scale))

    plain = jax.jit(jax.grad(loss, argnums=(0, 1)))(signals, dictionary)
    big = jax.jit(jax.grad(loss_scaled, argnums=(0, 1)))(signals, dictionary)
    np.testing.assert_allclose(big[0], plain[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(big[1], plain[1], rtol=1e-12, atol=1e-12)
    # vmap over dictionaries of very different scales == a Python loop.
    dictionaries = jnp.stack(
        [dictionary * 2.0**-300, dictionary, dictionary * 2.0**300]
    )
    mapped = jax.vmap(lambda d: omp(d, signals, n_nonzero).coef)(dictionaries)
    for d, coef in zip(dictionaries, mapped, strict=True):
        np.testing.assert_array_equal(coef, omp(d, signals, n_nonzero).coef)


@pytest.mark.parametrize("half", [jnp.float16, jnp.bfloat16])
def test_omp_half_precision_is_computed_in_float32(half):
    rng = np.random.default_rng(33)
    dictionary = jnp.asarray(random_dictionary_np(rng, 12, 20), half)
    # Values of 300: ‖y‖² overflows float16 (max 65504).
    signals = jnp.asarray(rng.standard_normal((5, 12)) * 300, half)
    got = omp(dictionary, signals, 4)
    ref = omp(dictionary.astype(jnp.float32), signals.astype(jnp.float32), 4)
    assert got.coef.dtype == half and got.residual_norm.dtype == half
    np.testing.assert_array_equal(got.support, ref.support)
    np.testing.assert_array_equal(got.coef, ref.coef.astype(half))
    np.testing.assert_array_equal(got.residual_norm, ref.residual_norm.astype(half))
    assert np.all(np.asarray(got.n_iter) == 4)
    gram = omp_gram(dictionary.T @ dictionary, signals @ dictionary, 4)
    assert gram.coef.dtype == half


def test_omp_with_m_0_codes_every_signal_as_zero():
    # m = 0: every signal is the zero signal and every atom the zero atom.
    for call in (omp, jax.jit(omp, static_argnames="n_nonzero")):
        got = call(jnp.zeros((0, 5)), jnp.zeros((3, 0)), n_nonzero=2)
        np.testing.assert_array_equal(got.coef, np.zeros((3, 5)))
        np.testing.assert_array_equal(got.support, -np.ones((3, 2)))
        np.testing.assert_array_equal(got.residual_norm, np.zeros(3))
        np.testing.assert_array_equal(got.n_iter, np.zeros(3))


def test_nan_in_traced_inputs_gives_nan_codes_never_a_valid_looking_one():
    # Concrete NaN is refused; under jit it is not checked and must propagate
    # (it used to give zero codes and a residual norm of 0).
    dictionary, signals = _inputs()
    clean = omp(dictionary, signals, 2)
    bad = signals.copy()
    bad[1, 3] = np.nan
    bad[2, 0] = np.inf
    got = jax.jit(functools.partial(omp, n_nonzero=2))(dictionary, bad)
    assert np.all(np.isnan(np.asarray(got.coef[1:]))), got.coef
    assert np.all(np.isnan(np.asarray(got.residual_norm[1:])))
    np.testing.assert_allclose(got.coef[0], clean.coef[0], rtol=1e-6)  # jit rounding
    np_d = dictionary.copy()
    np_d[0, 5] = np.nan
    got = jax.jit(functools.partial(omp, n_nonzero=2))(np_d, signals)
    assert np.all(np.isnan(np.asarray(got.coef)))
    assert np.all(np.isnan(np.asarray(got.residual_norm)))
    gram, xy = dictionary.T @ dictionary, signals @ dictionary
    norms = np.sum(signals**2, axis=-1)
    run = jax.jit(lambda g, b, n: omp_gram(g, b, 2, norms_squared=n))
    got = run(gram, np.where(np.arange(3)[:, None] == 1, np.nan, xy), norms)
    assert np.isnan(np.asarray(got.coef[1])).all()
    assert np.isnan(np.asarray(got.residual_norm[1]))
    assert np.isfinite(np.asarray(got.coef)[[0, 2]]).all()
    got = run(gram, xy, np.r_[np.nan, norms[1:]])
    assert np.isnan(np.asarray(got.coef[0])).all()
    assert np.isnan(np.asarray(got.residual_norm[0]))
