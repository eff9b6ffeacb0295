"""K-SVD dictionary learning, exact and approximate, jittable and vmappable.

K-SVD (Aharon, Elad, Bruckstein 2006) alternates sparse coding of all signals with OMP
(:func:`jad.sparse.omp`) and a sequential update of every atom together with the
coefficients that use it. PSDL (sec. 2.2, appendix A) learns one such dictionary per
feature location, e.g. 196 locations of 256 channels, so :func:`ksvd` is written for one
set of signals and vmapped over locations: ``jax.vmap(ksvd_fn)(signals, dictionaries)``.

Conventions: ``signals`` (N, m) has one signal per row; dictionaries (m, K) hold atoms
as columns; codes (N, K) satisfy ``signals ≈ codes @ dictionary.T``. As in
:func:`jad.sparse.omp`, the work is done on the signals divided by a power of two near
their largest magnitude (K-SVD is scale-equivariant: the atoms do not change, codes and
errors scale back exactly), so finite signals of any magnitude are learnt from, and
float16/bfloat16 inputs are computed in float32 and the results cast back.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jad import _checks
from jad.sparse.omp import _exponent, _map_on_cpu, _times_pow2, omp

__all__ = ["KSVDResult", "ksvd"]

Method = Literal["exact", "approx"]
_METHODS = ("exact", "approx")


class KSVDResult(NamedTuple):
    """Result of :func:`ksvd`.

    Attributes:
      dictionary: (m, K) learned dictionary, unit-norm atoms.
      codes: (N, K) codes after the last dictionary update (the coefficients updated
        together with the atoms, not a fresh OMP; PSDL's training statistics use these).
      errors: (n_iter,) root-mean-square representation error
        ``sqrt(mean_i ‖y_i - D a_i‖²)`` after each iteration.
      n_replaced: (n_iter,) int32 number of unused atoms replaced in each iteration.
    """

    dictionary: jax.Array
    codes: jax.Array
    errors: jax.Array
    n_replaced: jax.Array


def _safe_unit(v, fallback):
    """V / ‖v‖, or ``fallback`` where v = 0 (no NaN, finite gradients)."""
    norm = jnp.linalg.norm(v)
    ok = norm > 0
    return jnp.where(ok, v / jnp.where(ok, norm, 1.0), fallback), ok


def _update_atom(k, state, signals, method, replace_unused, precision):
    """Updates atom k and its coefficients in place (one step of the K-SVD sweep).

    ``state`` = (dt (K, m), at (K, N), residual (N, m), taken (N,) bool, n_replaced).
    The residual ``Y - codes Dᵀ`` is kept up to date with rank-1 updates.
    """
    dt, at, residual, taken, n_replaced = state
    d_old, a_old = dt[k], at[k]
    users = a_old != 0
    if method == "exact":
        # E_k = E + a_k d_kᵀ: the residual without atom k (non-user rows unchanged).
        e_k = residual + jnp.outer(a_old, d_old)
        # Rank-1 SVD of E_k restricted to the users (Aharon et al. 2006, eq. 20-21);
        # zero rows of non-users change neither the singular values nor v.
        restricted = jnp.where(users[:, None], e_k, 0.0)
        u, sv, vt = jnp.linalg.svd(restricted, full_matrices=False)
        # u is exactly zero on the non-users only in exact arithmetic: mask it, so
        # a code keeps its support (at most n_nonzero atoms per signal).
        d_new, a_new = vt[0], jnp.where(users, sv[0] * u[:, 0], 0.0)
        flip = jnp.where(d_new @ d_old < 0, -1.0, 1.0)  # deterministic sign
        d_new, a_new = d_new * flip, a_new * flip
    else:
        # Approximate K-SVD (Rubinstein et al. 2008): one alternating step,
        # d = E_kᵀ g / ‖E_kᵀ g‖, g = E_k d on the users, with E_k = E + g d_oldᵀ
        # expanded so that E_k is never formed (two matvecs over E instead of a copy).
        d_raw = jnp.matmul(a_old, residual, precision=precision) + d_old * (
            a_old @ a_old
        )
        d_new, _ = _safe_unit(d_raw, d_old)
        e_d = jnp.matmul(residual, d_new, precision=precision) + a_old * (d_old @ d_new)
        a_new = jnp.where(users, e_d, 0.0)
    used = jnp.any(users)
    if replace_unused:
        # An atom nobody uses is replaced by the worst-represented signal, normalised;
        # a signal replaces at most one atom per sweep (only read when the atom is
        # unused, and then E_k = E). A real branch when not vmapped (the search for
        # the worst signal is a pass over E), a select under vmap.
        def replacement(taken):
            err = jnp.where(taken, -1.0, jnp.sum(residual * residual, axis=1))
            worst = jnp.argmax(err)
            d_rep, rep_ok = _safe_unit(signals[worst], d_old)
            taken = taken | ((jnp.arange(taken.shape[0]) == worst) & rep_ok)
            return d_rep, taken, rep_ok.astype(jnp.int32)

        def keep(taken):
            return d_new, taken, jnp.int32(0)

        d_new, taken, replaced = jax.lax.cond(used, keep, replacement, taken)
        n_replaced = n_replaced + replaced
    else:
        d_new = jnp.where(used, d_new, d_old)
    a_new = jnp.where(used, a_new, 0.0)
    residual = residual + jnp.outer(a_old, d_old) - jnp.outer(a_new, d_new)
    return dt.at[k].set(d_new), at.at[k].set(a_new), residual, taken, n_replaced


def ksvd(
    signals: jax.typing.ArrayLike,
    init_dictionary: jax.typing.ArrayLike,
    n_nonzero: int,
    n_iter: int,
    *,
    method: Method = "exact",
    key: jax.Array | None = None,
    monotone: bool = True,
    replace_unused: bool = True,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> KSVDResult:
    """Learns a dictionary for ``signals`` with K-SVD.

    Each iteration (Aharon, Elad, Bruckstein 2006, Fig. 2): sparse-code every signal
    with OMP (``n_nonzero`` atoms), then sweep over the atoms; atom k and the
    coefficients of the signals that use it are replaced by the best rank-1
    approximation of the residual without atom k, restricted to those signals.
    ``method="exact"`` takes that rank-1 approximation from an SVD; ``"approx"`` is the
    approximate K-SVD of Rubinstein, Zibulevsky, Elad (2008) (one alternating step,
    ``d = E g/‖E g‖, g = Eᵀd``), which is what PSDL's code runs (sparselandtools
    ``ApproximateKSVD``).

    Args:
      signals: (N, m) float, one training signal per row.
      init_dictionary: (m, K) float, initial atoms as columns (see
        :func:`dct_dictionary`, :func:`haar_dictionary`, :func:`random_dictionary`);
        normalised to unit norm first (zero columns count as unused atoms).
      n_nonzero: static int s, 1 <= s <= K, OMP sparsity (PSDL: K/4).
      n_iter: static int >= 1, number of K-SVD iterations (PSDL: 20).
      method: ``"exact"`` (SVD) or ``"approx"`` (Rubinstein et al.).
      key: optional PRNG key (one: ``jax.random.key(seed)`` or a raw uint32 (2,)
        key; vmap for several). With a key, each sweep visits the atoms in a fresh
        random order (as Rubinstein's ksvdbox does); without one, in order 0..K-1
        (as sparselandtools and PSDL do).
      monotone: keep a signal's previous code when the new OMP code represents it
        worse. OMP is greedy, so without this the error can rise slightly between
        iterations; with it ``errors`` never increases (the monotonicity argument of
        Aharon et al. assumes an exact sparse coder). ``False`` reproduces plain K-SVD
        (sparselandtools, PSDL).
      replace_unused: replace atoms that no signal uses by the worst-represented
        signal, normalised (Aharon et al. sec. IV-E). ``False`` leaves them unchanged,
        as sparselandtools does.
      precision: matmul precision of the dictionary updates and of OMP.

    Returns:
      :class:`KSVDResult` (dictionary (m, K), codes (N, K), errors (n_iter,),
      n_replaced (n_iter,)), in the promoted float dtype of the inputs (float16 and
      bfloat16 inputs are computed in float32 and the results cast back).

    Raises:
      ValueError: bad shapes, no signal (N = 0), no feature (m = 0) or no atom
        (K = 0), ``n_nonzero`` outside 1..K, ``n_iter`` < 1, unknown ``method``, NaN
        or inf in concrete inputs.
      TypeError: non-floating inputs, non-int ``n_nonzero``/``n_iter``, a ``key``
        that is not one PRNG key.

    Note:
      Cost per iteration: one OMP over the N signals plus, per atom, O(N·m) for
      ``"approx"`` and an SVD of an (N, m) matrix for ``"exact"``; prefer
      ``"approx"`` for large m and N. The sweep is sequential over atoms (each
      update sees the previous ones), the signals are processed in parallel.
      ``jax.vmap`` over dictionaries (PSDL's locations) is a fast path: a custom
      batching rule maps the instances one after another on CPU (a plain vmap
      would turn the replacement's branch into a select computing both sides and
      the sweep's row reads into gathers) and vmaps them on accelerators, decided
      from ``jax.default_backend()`` when tracing. Replacing an unused atom needs a
      pass over the residual; it is a real branch (``lax.cond``). Not
      differentiable: ``jax.grad`` raises (the batching rule has no derivative).

    Example:
      >>> import jax
      >>> from jad.sparse import dct_dictionary, ksvd
      >>> signals = jax.random.normal(jax.random.key(0), (50, 8))
      >>> res = ksvd(signals, dct_dictionary(8, 8), 2, 3, method="approx")
      >>> res.dictionary.shape, res.codes.shape, res.errors.shape
      ((8, 8), (50, 8), (3,))

    References:
      Aharon, Elad, Bruckstein, "K-SVD: An algorithm for designing overcomplete
      dictionaries for sparse representation", IEEE TSP 54(11), 2006.
      Rubinstein, Zibulevsky, Elad, "Efficient implementation of the K-SVD algorithm
      using batch orthogonal matching pursuit", Technion CS-2008-08.
    """
    fn = "ksvd"
    signals = _checks.as_float_array(fn, "signals", signals)
    init_dictionary = _checks.as_float_array(fn, "init_dictionary", init_dictionary)
    _checks.check_rank(fn, "signals", signals, 2, "N, m")
    _checks.check_rank(fn, "init_dictionary", init_dictionary, 2, "m, K")
    num_signals, m = signals.shape
    if init_dictionary.shape[0] != m:
        raise ValueError(
            f"{fn}: init_dictionary must be (m, K) with m == signals.shape[1] = {m}; "
            f"got {tuple(init_dictionary.shape)}."
        )
    if num_signals < 1:
        raise ValueError(f"{fn}: signals must hold at least one signal; got N = 0.")
    if m < 1:
        raise ValueError(
            f"{fn}: signals must have m >= 1 features (unit-norm atoms need one); got "
            f"shape {tuple(signals.shape)}."
        )
    num_atoms = init_dictionary.shape[1]
    if num_atoms < 1:
        raise ValueError(
            f"{fn}: init_dictionary must hold at least one atom (K >= 1); got shape "
            f"{tuple(init_dictionary.shape)}."
        )
    n_nonzero = _checks.check_int(fn, "n_nonzero", n_nonzero, low=1, high=num_atoms)
    n_iter = _checks.check_int(fn, "n_iter", n_iter, low=1)
    _checks.check_choice(fn, "method", method, _METHODS)
    _checks.check_finite(fn, "signals", signals)
    _checks.check_finite(fn, "init_dictionary", init_dictionary)
    if key is not None:
        _checks.check_key(fn, "key", key)

    dtype = jnp.promote_types(signals.dtype, init_dictionary.dtype)
    # LAPACK has no float16/bfloat16: half inputs are computed in float32.
    work = jnp.promote_types(dtype, jnp.float32)
    keys = (
        jax.random.split(key, n_iter)
        if key is not None
        else jnp.zeros((n_iter,), jnp.int32)  # placeholder, unused
    )
    learn = _learner(n_nonzero, n_iter, method, key is not None, monotone,
                     replace_unused, precision)
    dictionary, codes, errors, n_replaced = learn(
        signals.astype(work), init_dictionary.astype(work), keys)
    return KSVDResult(dictionary.astype(dtype), codes.astype(dtype),
                      errors.astype(dtype), n_replaced)


@functools.cache
def _learner(n_nonzero, n_iter, method, keyed, monotone, replace_unused, precision):
    """The K-SVD loop for one set of signals, as a ``custom_vmap`` function.

    vmapped over dictionaries (PSDL's one per location, or a user's
    ``jax.vmap(ksvd)``), the instances are mapped one after another on CPU
    (:func:`jad.sparse.omp._map_on_cpu`): under a plain vmap the data-dependent
    branch of the atom replacement becomes a select that computes both sides,
    and the sweep's row reads become gathers (2x slower, measured at C = 256,
    N = 200, s = 64); accelerators keep the parallel vmap.
    """

    def learn(signals, init_dictionary, keys):
        return _ksvd_loop(signals, init_dictionary, keys, n_nonzero, n_iter,
                          method, keyed, monotone, replace_unused, precision)

    kernel = jax.custom_batching.custom_vmap(learn)

    @kernel.def_vmap
    def _rule(axis_size, in_batched, *args):
        del axis_size
        out = _map_on_cpu(kernel, learn, in_batched, args)
        return out, jax.tree.map(lambda _: True, out)

    return kernel


def _ksvd_loop(signals, init_dictionary, keys, n_nonzero, n_iter, method, keyed,
               monotone, replace_unused, precision):
    """:func:`ksvd` on validated inputs in the work dtype."""
    num_signals = signals.shape[0]
    num_atoms = init_dictionary.shape[1]
    # One power of two for all signals (the dictionary is shared, so per-signal
    # scales would reweight the objective): exact, and no overflow of ‖y‖².
    shift = _exponent(jnp.max(jnp.abs(signals), initial=0.0))
    signals = _times_pow2(signals, -shift)
    dt0 = init_dictionary.T
    # Each atom divided by a power of two near its largest entry before its norm is
    # taken, so that huge or tiny finite atoms do not overflow or underflow to zero.
    dt0 = _times_pow2(dt0, -_exponent(jnp.max(jnp.abs(dt0), axis=1, keepdims=True)))
    norms = jnp.linalg.norm(dt0, axis=1, keepdims=True)
    dt0 = jnp.where(norms > 0, dt0 / jnp.where(norms > 0, norms, 1.0), 0.0)

    def row_errors(residual):
        return jnp.sum(residual * residual, axis=1)

    def iteration(carry, it_key):
        dt, codes, residual = carry
        coded = omp(dt.T, signals, n_nonzero, precision=precision).coef  # sparse coding
        new_residual = signals - jnp.matmul(coded, dt, precision=precision)
        if monotone:
            keep = row_errors(residual) < row_errors(new_residual)
            coded = jnp.where(keep[:, None], codes, coded)
            new_residual = jnp.where(keep[:, None], residual, new_residual)
        order = (
            jax.random.permutation(it_key, num_atoms)
            if keyed
            else jnp.arange(num_atoms)
        )

        def sweep(j, state):
            return _update_atom(
                order[j], state, signals, method, replace_unused, precision
            )

        state = (
            dt,
            coded.T,
            new_residual,
            jnp.zeros((num_signals,), bool),
            jnp.int32(0),
        )
        dt, at, _, _, n_replaced = jax.lax.fori_loop(0, num_atoms, sweep, state)
        codes = at.T
        # Recompute the residual exactly (the sweep's rank-1 updates add rounding).
        residual = signals - jnp.matmul(codes, dt, precision=precision)
        error = jnp.sqrt(jnp.mean(row_errors(residual)))
        return (dt, codes, residual), (error, n_replaced)

    init = (dt0, jnp.zeros((num_signals, num_atoms), signals.dtype), signals)
    (dt, codes, _), (errors, n_replaced) = jax.lax.scan(iteration, init, keys)
    return (dt.T, _times_pow2(codes, shift), _times_pow2(errors, shift),
            n_replaced.astype(jnp.int32))
