"""Orthogonal Matching Pursuit: batched, jittable, differentiable on a fixed support.

Two entry points share one kernel:

- :func:`omp` takes the dictionary ``D`` (m, K) and signals ``y`` (..., m).
- :func:`omp_gram` takes ``G = DᵀD`` (K, K) and ``Dᵀy`` (..., K), like scikit-learn's
  ``orthogonal_mp_gram``, for callers that already hold them (SGFR's memory bank, where
  m = h·w·C is huge and K = number of training images is small).

Algorithm: Batch-OMP (Rubinstein, Zibulevsky, Elad 2008) with a progressive Cholesky
factor of the Gram matrix restricted to the support. Per signal, the greedy loop only
touches K-vectors and a (s, K) table ``B`` of correlations between all atoms and the
orthonormalised selected atoms, so a batch costs batched matrix-vector products and no
Python loop. The loop is SGFR's Algorithm 1 (SGFR eq. 2-5): select
``j* = argmax x_jᵀe`` (SGFR eq. 3), least squares on the support (SGFR eq. 4), update
the residual (SGFR eq. 5), stop after ``n_nonzero`` atoms or when ``‖e‖₂ <= tol``.

Conventions: atoms are columns of ``dictionary``; signals are rows (last axis). Shapes:
m signal dimension, K atoms, s = ``n_nonzero``, ``...`` any leading batch dimensions.

Scale: OMP is scale-equivariant (scaling a signal scales its coefficients and residual,
scaling the dictionary divides the coefficients, and the selection does not change), so
the pursuit runs on the dictionary and on each signal divided by a power of two near
their largest magnitude and the results are scaled back. Powers of two scale floats
exactly: results are bitwise those of the unscaled pursuit wherever that one neither
overflows nor underflows, and finite signals of any magnitude (e.g. 1e19 in float32,
whose squared norm overflows) are coded correctly. float16 and bfloat16 inputs are
computed in float32 and the outputs cast back.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad.ops._triangular import cho_solve, solve_lower

__all__ = ["OMPResult", "omp", "omp_gram"]

Selection = Literal["abs", "signed"]
_SELECTIONS = ("abs", "signed")
# An atom whose squared distance to the span of the selected atoms is below this
# fraction of its squared norm is treated as linearly dependent (the pursuit stops for
# that signal, as scikit-learn's does); x100 eps leaves room for rounding in the
# progressive Cholesky update.
_DEPENDENCE_RTOL = 100.0
# The greedy loop runs in statically bounded phases so that iteration n reads only the
# rows of the (s, K) correlation table that can be non-zero: at most _MAX_PHASES phases
# of at least _MIN_PHASE_ROWS iterations each (8 phases of 8 at s = 64: 22 % faster
# than 4 on a 2-core CPU, measured; 16 are slower again, as each phase adds a loop).
_MAX_PHASES = 8
_MIN_PHASE_ROWS = 8


class OMPResult(NamedTuple):
    """Result of :func:`omp` / :func:`omp_gram`.

    Attributes:
      coef: (..., K) sparse coefficients; zero outside the support.
      support: (..., s) int32 indices of the selected atoms in selection order, padded
        with -1 where the pursuit stopped early.
      residual_norm: (...) ``‖y - D coef‖₂``. From :func:`omp_gram` it is computed as
        ``sqrt(max(‖y‖² - coefᵀDᵀy, 0))`` and is ``None`` when ``norms_squared`` was not
        given.
      n_iter: (...) int32 number of atoms selected (the length of the valid support).
    """

    coef: jax.Array
    support: jax.Array
    residual_norm: jax.Array | None
    n_iter: jax.Array


class _Selection(NamedTuple):
    support: jax.Array  # (s,) int32, -1 padded
    chol: jax.Array  # (s, s) lower Cholesky factor of G[S, S], identity rows on padding
    coef: jax.Array  # (K,) least-squares coefficients on the support
    n_iter: jax.Array  # () int32


def _select_one(gram, xy, norm_sq, allowed, n_nonzero, tol, selection):
    """Greedy selection for one signal (no gradient flows through this).

    Args:
      gram: (K, K) Gram matrix DᵀD.
      xy: (K,) correlations Dᵀy.
      norm_sq: () ‖y‖² (only used for the tolerance stop).
      allowed: (K,) bool, atoms that may be chosen.
      n_nonzero: static int s.
      tol: () residual-norm tolerance (of this signal, in its scale).
      selection: "abs" (|x_jᵀe|, classic OMP) or "signed" (x_jᵀe, SGFR eq. 3).

    The loop carries ``bt`` (s, K): row n holds the correlations of every atom with the
    n-th orthonormalised selected atom q_n, i.e. ``bt = L⁻¹ G[S, :]`` with L the
    Cholesky factor of G[S, S]. Everything else is a K- or s-vector, so one iteration
    is one (s,)·(s, K) product; L itself is rebuilt from ``bt`` after the loop.
    """
    num_atoms = gram.shape[0]
    dtype = gram.dtype
    diag = jnp.diagonal(gram)
    rtol = _DEPENDENCE_RTOL * jnp.finfo(dtype).eps
    allowed = allowed & (diag > 0)
    atoms = jnp.arange(num_atoms)
    # max_j (x_jᵀy)² / ‖x_j‖² <= ‖y‖²: a scale of the signal's energy that is known even
    # without ‖y‖ (omp_gram without norms_squared).
    energy = jnp.max(jnp.where(allowed, xy**2 / jnp.where(allowed, diag, 1.0), 0.0))

    def residual_small(eps):
        return jnp.sqrt(jnp.maximum(eps, 0.0)) <= tol

    bounds = _phase_bounds(n_nonzero)

    def body(n, carry, phase):
        # ``bt`` is kept as one block of rows per phase; in phase p only blocks 0..p
        # can be non-zero, so the later ones are not read.
        blocks, lkk, z, support, chosen, alpha, eps, done = carry
        score = jnp.abs(alpha) if selection == "abs" else alpha  # SGFR eq. 3
        avail = allowed & ~chosen
        if selection == "signed":
            # An atom in the span of the chosen ones (a duplicate bank image)
            # correlates at ~0 after the least squares, which beats every negative
            # correlation: it would be picked, found dependent and end the pursuit.
            # Skip those: ‖x_j - P_S x_j‖² = G_jj - ‖L⁻¹ G[S, j]‖².
            spanned = diag - sum(jnp.sum(block * block, axis=0)
                                 for block in blocks[: phase + 1])
            avail = avail & (spanned > rtol * diag)
        k = _first_argmax(jnp.where(avail, score, -jnp.inf))
        ws = [block[:, k] for block in blocks[: phase + 1]]  # L⁻¹ G[S, k]
        lkk_sq = diag[k] - sum(_dot(w, w) for w in ws)
        ok = ~done & avail[k] & (lkk_sq > rtol * diag[k])
        l_new = jnp.sqrt(jnp.where(ok, lkk_sq, 1.0))
        z_new = alpha[k] / l_new  # coordinate on q_n
        # z_new² is the drop of ‖e‖²: with abs selection, a drop at rounding level
        # means an exact fit. The signed selection's atom may drop ‖e‖² by nothing
        # while others still correlate (negatively): SGFR Algorithm 1 goes on, so
        # there the fit is exact only when no available atom correlates at all.
        if selection == "abs":
            drop = z_new**2
        else:
            drop = jnp.max(jnp.where(avail, alpha**2 / jnp.where(avail, diag, 1.0),
                                     0.0))
        ok = ok & (drop > jnp.finfo(dtype).eps * energy)
        z_new = jnp.where(ok, z_new, 0.0)
        proj = sum(_dot(w, block) for w, block in zip(ws, blocks, strict=False))
        b_new = jnp.where(
            ok, (gram[k] - proj) / l_new, 0.0
        )  # G[k, :] q_n (G symmetric)
        blocks = list(blocks)
        blocks[phase] = blocks[phase].at[n - bounds[phase]].set(b_new)
        lkk = lkk.at[n].set(jnp.where(ok, l_new, 1.0))
        z = z.at[n].set(z_new)
        support = support.at[n].set(jnp.where(ok, k, -1).astype(jnp.int32))
        chosen = chosen | ((atoms == k) & ok)
        alpha = alpha - b_new * z_new  # SGFR eq. 4-5 in Gram form
        eps = eps - z_new**2
        done = done | ~ok | residual_small(eps)
        return tuple(blocks), lkk, z, support, chosen, alpha, eps, done

    carry = (
        tuple(
            jnp.zeros((stop - start, num_atoms), dtype)
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
        ),
        jnp.ones((n_nonzero,), dtype),
        jnp.zeros((n_nonzero,), dtype),
        jnp.full((n_nonzero,), -1, jnp.int32),
        jnp.zeros((num_atoms,), bool),
        xy,
        norm_sq,
        residual_small(norm_sq),
    )
    for phase, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        step = functools.partial(body, phase=phase)
        carry = jax.lax.fori_loop(start, stop, step, carry)
    blocks, lkk, z, support, *_ = carry
    bt = jnp.concatenate(blocks, axis=0)
    # L[n, :n] = (L⁻¹ G[S, k_n])[:n] = bt[:n, k_n], L[n, n] = lkk[n]; identity rows on
    # the padding (bt rows there are zero).
    valid = support >= 0
    cols = jnp.where(valid[:, None], bt[:, jnp.where(valid, support, 0)].T, 0.0)
    chol = jnp.tril(cols, -1) + jnp.diag(lkk)
    # L Lᵀ gamma = D_Sᵀ y with z = L⁻¹ D_Sᵀ y, so gamma = L⁻ᵀ z; padded entries stay 0.
    gamma = solve_lower(chol, z, transpose=True)
    coef = _scatter(support, gamma, num_atoms)
    return _Selection(support, chol, coef, jnp.sum(valid).astype(jnp.int32))


def _dot(a, b):
    """``a @ b`` in full float32 on every backend.

    The pursuit's products in Gram space pick the next atom; at TF32 (the default
    for float32 matmuls on recent GPUs) they could pick another one where the
    Gram matrix is ill-conditioned, as memory banks of similar images are.
    """
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _first_argmax(x):
    """``jnp.argmax`` of a 1-D array without NaN (the first index of the maximum).

    Written as two plain reductions (the maximum, then the smallest index holding
    it): XLA's CPU backend vectorises those, while argmax's (value, index) reduction
    runs as a scalar loop (2x slower on a (200, 256) batch, measured).
    """
    index = jnp.arange(x.shape[0], dtype=jnp.int32)
    return jnp.min(jnp.where(x == jnp.max(x), index, x.shape[0]))


def _phase_bounds(n_nonzero):
    """Static phase boundaries [0, ..., n_nonzero] of the greedy loop (see below)."""
    num = max(1, min(_MAX_PHASES, n_nonzero // _MIN_PHASE_ROWS))
    return [round(i * n_nonzero / num) for i in range(num + 1)]


def _scatter(support, values, num_atoms):
    """(s,) values at (s,) indices (-1 = none) -> dense (K,) vector."""
    index = jnp.where(support >= 0, support, num_atoms)
    return jnp.zeros((num_atoms,), values.dtype).at[index].add(values, mode="drop")


def _refine_one(sel: _Selection, gram, xy):
    """One step of iterative refinement of the least squares on the fixed support.

    Its value equals the selection's coefficients up to rounding (it removes some of
    it), and its derivative is exactly that of ``argmin ‖y - D_S c‖²`` w.r.t. ``gram``
    and ``xy`` (hence w.r.t. the dictionary and the signal): with the Cholesky factor
    held constant, d(c0 + G_S⁻¹ (Xy_S - G_S c0)) = G_S⁻¹ (dXy_S - dG_S c).
    """
    num_atoms = gram.shape[0]
    valid = sel.support >= 0
    index = jnp.where(valid, sel.support, 0)
    corr = xy - _dot(gram, sel.coef)  # (K,) D_Sᵀ(y - D_S c0) on the support
    rhs = jnp.where(valid, corr[index], 0.0)
    delta = cho_solve(sel.chol, rhs)
    return sel.coef + _scatter(sel.support, jnp.where(valid, delta, 0.0), num_atoms)


def _map_on_cpu(kernel, plain, in_batched, args):
    """Batching rule body shared by the sparse kernels: a vmapped axis, mapped.

    On CPU the instances run one after another (``lax.map`` of ``kernel``, the
    ``custom_vmap`` function itself, so an enclosing vmap meets it again), which
    keeps each instance's data in cache and its data-dependent gathers and
    branches unbatched; on accelerators they are vmapped in parallel (``plain``,
    the undecorated function). ``in_batched`` says which of ``args`` carry the
    vmapped axis (at 0); the others are shared. Decided when tracing, from
    ``jax.default_backend()``.
    """
    if jax.default_backend() != "cpu":
        in_axes = tuple(0 if b else None for b in in_batched)
        return jax.vmap(plain, in_axes=in_axes)(*args)
    mapped = [a for a, b in zip(args, in_batched, strict=True) if b]

    def one(xs):
        it = iter(xs)
        return kernel(*(next(it) if b else a
                        for a, b in zip(args, in_batched, strict=True)))

    return jax.lax.map(one, mapped)


# Signals per vmapped group on CPU: each carries an (s, K) table, and groups of about
# this many bytes of tables stay in cache (1.5-2x faster than all signals at once at
# N = 762, K = 100-256, measured on a 2-core CPU).
_CPU_TABLE_BYTES = 3 << 18


def _signal_batch(num_signals: int, n_nonzero: int, num_atoms: int) -> int | None:
    """Signals per group of the selection on CPU, None for all at once."""
    if jax.default_backend() != "cpu":
        return None
    table = 4 * n_nonzero * num_atoms
    batch = 2 ** max(3, round(math.log2(max(1.0, _CPU_TABLE_BYTES / table))))
    return batch if num_signals > batch else None


@functools.cache
def _selector(n_nonzero, selection):
    """The greedy selection over a flat batch of signals sharing one Gram matrix.

    A ``custom_vmap`` function: vmapped over signals only (``gram`` shared), it is
    the plain vmapped kernel; vmapped over dictionaries (``gram`` batched, as
    PSDL's one dictionary per location, or a user's ``jax.vmap(omp)`` over them),
    the dictionaries are mapped one after another on CPU (:func:`_map_on_cpu`):
    batching the selection over dictionaries turns every ``gram[k]`` row read
    into a gather across dictionaries, 2-3x slower there (measured at C = 256,
    N = 200, s = 64 on 16 dictionaries).
    """
    def one(gram, xy, norms_sq, allowed, tol):
        return _select_one(gram, xy, norms_sq, allowed, n_nonzero, tol, selection)

    def select(gram, xy, norms_sq, allowed, tol):
        batch = _signal_batch(xy.shape[0], n_nonzero, gram.shape[0])
        if batch is None:
            return jax.vmap(one, in_axes=(None, 0, 0, 0, 0))(
                gram, xy, norms_sq, allowed, tol)
        return jax.lax.map(lambda a: one(gram, *a), (xy, norms_sq, allowed, tol),
                           batch_size=batch)

    kernel = jax.custom_batching.custom_vmap(select)

    @kernel.def_vmap
    def _rule(axis_size, in_batched, gram, *rest):
        if in_batched[0]:
            out = _map_on_cpu(kernel, select, in_batched, (gram, *rest))
        else:
            # More signals for the same Gram matrix: folded into the flat batch,
            # so that an enclosing vmap over dictionaries still meets the kernel.
            num = rest[0].shape[-2]
            flat = [
                (x if b else jnp.broadcast_to(x, (axis_size,) + x.shape))
                .reshape((axis_size * num,) + x.shape[1 + b:])
                for x, b in zip(rest, in_batched[1:], strict=True)
            ]
            out = jax.tree.map(lambda y: y.reshape((axis_size, num) + y.shape[1:]),
                               kernel(gram, *flat))
        return out, jax.tree.map(lambda _: True, out)

    return kernel


@functools.partial(jax.jit, static_argnames=("n_nonzero", "selection"))
def _pursuit(gram, xy, norms_sq, allowed, n_nonzero, tol, selection):
    """Runs the selection (no gradient) and the refinement over a flat batch.

    ``tol`` is (N,), one tolerance per signal (each signal has its own scale).
    """
    # Every input of the selection is stop_gradient'ed: its custom batching rule
    # has no derivative, and autodiff must not reach it.
    sel = _selector(n_nonzero, selection)(
        jax.lax.stop_gradient(gram),
        jax.lax.stop_gradient(xy),
        jax.lax.stop_gradient(norms_sq),
        allowed,
        jax.lax.stop_gradient(tol),
    )
    sel = jax.tree.map(jax.lax.stop_gradient, sel)
    coef = jax.vmap(_refine_one, in_axes=(0, None, 0))(sel, gram, xy)
    return sel, coef


def _safe_sqrt(sq):
    """sqrt(sq) for sq >= 0 with a finite (zero) gradient at 0; NaN stays NaN."""
    zero = sq == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def _safe_norm(x, axis=-1):
    """‖x‖₂ along ``axis`` with a finite (zero) gradient at x = 0."""
    return _safe_sqrt(jnp.sum(x * x, axis=axis))


def _work_dtype(*dtypes):
    """The dtype the pursuit runs in: the promoted float dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _max_shift(dtype) -> int:
    """Largest |e| for which 2**e and 2**-e are normal floats of ``dtype``."""
    return int(jnp.finfo(dtype).maxexp) - 3


def _exponent(x):
    """The exponent e of ``x = f 2^e``, 0.5 <= f < 1, clipped to ±_max_shift.

    ``x`` >= 0 is a largest magnitude; 0 for x = 0, inf or NaN (those are not
    scaled). No gradient flows through the exponent.
    """
    bound = _max_shift(x.dtype)
    return jnp.clip(jnp.frexp(jax.lax.stop_gradient(x))[1], -bound, bound)


def _pow2(e, dtype):
    """2**e as ``dtype``, exactly (|e| <= _max_shift), built from its bits."""
    info = jnp.finfo(dtype)
    itype = jnp.int32 if info.bits == 32 else jnp.int64
    bits = (e.astype(itype) + (int(info.maxexp) - 1)) << int(info.nmant)
    return jax.lax.bitcast_convert_type(bits, dtype)


def _times_pow2(x, e):
    """Returns x * 2**e, exact unless it overflows or underflows (|e| <= 2 bound).

    Two factors, so that ``e`` may reach twice the exponent of a normal float; both
    scale in the same direction, so no intermediate overflows on its own.
    """
    half = e // 2
    return x * _pow2(half, x.dtype) * _pow2(e - half, x.dtype)


def _finite_rows(x):
    """(N,) True where the row of (N, K) ``x`` is all finite."""
    return jnp.all(jnp.isfinite(x), axis=-1)


def _result(sel: _Selection, coef, residual_norm, batch_shape) -> OMPResult:
    """Reshapes flat-batch outputs back to the caller's batch shape."""
    return OMPResult(
        coef=coef.reshape(batch_shape + coef.shape[-1:]),
        support=sel.support.reshape(batch_shape + sel.support.shape[-1:]),
        residual_norm=None
        if residual_norm is None
        else residual_norm.reshape(batch_shape),
        n_iter=sel.n_iter.reshape(batch_shape),
    )


def _check_common(fn, n_nonzero, num_atoms, tol, selection):
    n_nonzero = _checks.check_int(fn, "n_nonzero", n_nonzero, low=1, high=num_atoms)
    _checks.check_choice(fn, "selection", selection, _SELECTIONS)
    _check_tol(fn, tol)
    return n_nonzero


def _check_tol(fn, tol):
    """``tol``: a real scalar (type and shape also when traced), finite and >= 0."""
    _checks.check_real_scalar(fn, "tol", tol)
    if _checks.is_concrete(tol):
        tol_value = np.asarray(tol, np.float64)
        if not np.isfinite(tol_value) or tol_value < 0:
            raise ValueError(f"{fn}: tol must be a finite scalar >= 0; got {tol!r}.")


def _check_atoms(fn, name, num_atoms, shape):
    if num_atoms < 1:
        raise ValueError(
            f"{fn}: {name} must hold at least one atom (K >= 1); got shape "
            f"{tuple(shape)}."
        )


def _atom_mask(fn, atom_mask, batch_shape, num_atoms):
    """Validates ``atom_mask`` and broadcasts it to (prod(batch_shape), K) bool."""
    full = batch_shape + (num_atoms,)
    if atom_mask is None:
        return jnp.ones((int(np.prod(batch_shape, dtype=int)), num_atoms), bool)
    try:
        mask = jnp.asarray(atom_mask)
    except TypeError as err:
        raise TypeError(
            f"{fn}: atom_mask must be a bool array; got {type(atom_mask).__name__}."
        ) from err
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: atom_mask must be a bool array; got dtype {mask.dtype}."
        )
    try:
        mask = jnp.broadcast_to(mask, full)
    except ValueError as err:
        raise ValueError(
            f"{fn}: atom_mask must broadcast to (..., K) = {full}; got shape "
            f"{tuple(mask.shape)}."
        ) from err
    return mask.reshape(-1, num_atoms)


def omp(
    dictionary: jax.typing.ArrayLike,
    signals: jax.typing.ArrayLike,
    n_nonzero: int,
    *,
    tol: jax.typing.ArrayLike = 0.0,
    atom_mask: jax.typing.ArrayLike | None = None,
    selection: Selection = "abs",
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> OMPResult:
    """Sparse-codes ``signals`` over ``dictionary`` with Orthogonal Matching Pursuit.

    Solves ``min_c ‖y - D c‖₂²  s.t.  ‖c‖₀ <= n_nonzero`` greedily for every signal
    (SGFR eq. 2-5, Algorithm 1; PSDL's sparse coder): pick the atom most
    correlated with the residual, re-fit all selected atoms by least squares, repeat
    until ``n_nonzero`` atoms are chosen or ``‖residual‖₂ <= tol``. Implemented as
    Batch-OMP with a progressive Cholesky factor (Rubinstein, Zibulevsky, Elad 2008).

    Args:
      dictionary: (m, K) float, atoms as columns. Unit-norm atoms are expected for
        classic OMP. Other norms are allowed: the least-squares fit is exact whatever
        the norms, but selection ranks raw correlations ``x_jᵀe``, which favours long
        atoms (this is SGFR eq. 3 on unnormalised feature maps; normalise the columns
        first for textbook OMP). Zero atoms are never selected.
      signals: (..., m) float, any number of leading batch dimensions.
      n_nonzero: static int s, 1 <= s <= K, the maximum number of atoms per signal.
      tol: scalar >= 0; a signal stops as soon as its residual norm is <= ``tol``
        (SGFR's ε; note scikit-learn's ``tol`` is the *squared* norm). With the
        default 0 only an exact fit stops early.
      atom_mask: optional (..., K) bool, broadcastable to the batch: the atoms each
        signal may use (SGFR's memory bank M or its subset M_S). ``None`` = all.
      selection: ``"abs"`` picks ``argmax |x_jᵀe|`` (classic OMP, scikit-learn);
        ``"signed"`` picks ``argmax x_jᵀe`` exactly as SGFR eq. 3 writes it.
      precision: matmul precision for ``DᵀD``, ``Dᵀy`` and ``D c`` (full float32 by
        default, also on GPU/TPU where the default would be reduced precision).

    Returns:
      :class:`OMPResult` with ``coef`` (..., K), ``support`` (..., s) int32 (-1 padded),
      ``residual_norm`` (...) = ``‖y - D coef‖₂`` and ``n_iter`` (...) int32. Float
      outputs have the promoted dtype of ``dictionary`` and ``signals`` (float16 and
      bfloat16 are computed in float32 and cast back).

    Raises:
      ValueError: bad shapes, a dictionary without atoms (K = 0), ``n_nonzero``
        outside 1..K, ``tol`` not a scalar or negative, unknown ``selection``, NaN
        or inf in concrete inputs.
      TypeError: non-floating ``dictionary``/``signals``, non-bool ``atom_mask``,
        non-int ``n_nonzero``, non-real ``tol``.

    Note:
      Early stops: a signal stops when its residual norm reaches ``tol``, when no
      allowed atom is left, when the best atom is linearly dependent on the ones
      already chosen (its distance to their span is below ~100 machine epsilons of its
      norm; scikit-learn stops there too), or when adding it would lower ``‖e‖²`` by
      less than one machine epsilon of the signal's energy (an exact fit reached:
      without this rule rounding noise would add junk atoms). Stopped signals do not
      change further and
      their ``support`` is padded with -1. Zero signals return zero coefficients;
      with m = 0 every signal is the zero signal (zero coefficients, residual 0).

      Scale: each signal and the dictionary are divided by powers of two near their
      largest magnitude before the pursuit, ``tol`` by the signal's, and the
      coefficients and residual are scaled back. This is exact (OMP is
      scale-equivariant and powers of two scale floats exactly), so results are those
      of the plain pursuit, and finite signals whose squared norm would overflow
      (about 1e19 in float32) or underflow are coded correctly. Coefficients whose
      true value overflows are inf. Atoms are scaled together, so an atom far
      shorter than the longest one (squared norm ratio below the dtype's smallest
      normal number) counts as a zero atom.

      NaN or inf in traced inputs (not checked under ``jit``) give NaN ``coef`` and
      ``residual_norm`` for the signals they reach, never a valid-looking code.

      Batching: ``jax.vmap`` over dictionaries (one per location, as PSDL) is a
      fast path: a custom batching rule maps them one after another on CPU (as
      fast as ``lax.map``, 2x faster than a plain vmap) and vmaps them on
      accelerators, decided from ``jax.default_backend()`` when tracing. On CPU
      the selection also runs the signals in groups whose (s, K) tables fit in
      cache.

      Differentiation: the selection (an argmax) is piecewise constant; ``coef``,
      ``residual_norm`` and hence any loss of them are differentiable w.r.t.
      ``signals`` and ``dictionary`` as the least-squares solution on the selected
      support, ``c_S = (D_SᵀD_S)⁻¹ D_Sᵀ y``. This is obtained cheaply with one step
      of iterative refinement on the fixed support, which also refines the value.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.sparse import omp
      >>> D = jnp.eye(4)
      >>> res = omp(D, jnp.array([0.0, 3.0, 0.0, -1.0]), 2)
      >>> res.support.tolist(), res.coef.tolist()
      ([1, 3], [0.0, 3.0, 0.0, -1.0])

    References:
      Pati, Rezaiifar, Krishnaprasad, "Orthogonal matching pursuit", 1993.
      Rubinstein, Zibulevsky, Elad, "Efficient implementation of the K-SVD algorithm
      using batch orthogonal matching pursuit", Technion CS-2008-08.
    """
    fn = "omp"
    dictionary = _checks.as_float_array(fn, "dictionary", dictionary)
    signals = _checks.as_float_array(fn, "signals", signals, min_rank=1)
    _checks.check_rank(fn, "dictionary", dictionary, 2, "m, K")
    m, num_atoms = dictionary.shape
    if signals.shape[-1] != m:
        raise ValueError(
            f"{fn}: dictionary must be (m, K) with m == signals.shape[-1] = "
            f"{signals.shape[-1]}; got {tuple(dictionary.shape)}."
        )
    _check_atoms(fn, "dictionary", num_atoms, dictionary.shape)
    n_nonzero = _check_common(fn, n_nonzero, num_atoms, tol, selection)
    _checks.check_finite(fn, "dictionary", dictionary)
    _checks.check_finite(fn, "signals", signals)
    batch_shape = signals.shape[:-1]
    num_signals = int(np.prod(batch_shape, dtype=int))
    allowed = _atom_mask(fn, atom_mask, batch_shape, num_atoms)

    dtype = jnp.promote_types(dictionary.dtype, signals.dtype)
    work = _work_dtype(dtype)
    dictionary = dictionary.astype(work)
    flat = signals.astype(work).reshape(num_signals, m)  # m may be 0
    # Scale-free pursuit (module docstring): D' = D 2^-t, y' = y 2^-e per signal, so
    # c = c' 2^(e - t), ‖y - D c‖ = 2^e ‖y' - D' c'‖ and the tolerance is tol 2^-e.
    t = _exponent(jnp.max(jnp.abs(dictionary), initial=0.0))
    e = _exponent(jnp.max(jnp.abs(flat), axis=-1, initial=0.0))
    dictionary = _times_pow2(dictionary, -t)
    flat = _times_pow2(flat, -e[:, None])
    gram = jnp.matmul(dictionary.T, dictionary, precision=precision)
    xy = jnp.matmul(flat, dictionary, precision=precision)
    norms_sq = jnp.sum(flat * flat, axis=-1)
    sel, coef = _pursuit(
        gram,
        xy,
        norms_sq,
        allowed,
        n_nonzero=n_nonzero,
        tol=_times_pow2(jnp.full((num_signals,), tol, work), -e),
        selection=selection,
    )
    # NaN or inf in traced inputs: NaN codes, never valid-looking zeros.
    finite = _finite_rows(xy) & jnp.isfinite(norms_sq) & jnp.all(jnp.isfinite(gram))
    coef = jnp.where(finite[:, None], coef, jnp.nan)
    residual = flat - jnp.matmul(coef, dictionary.T, precision=precision)
    residual_norm = _times_pow2(_safe_norm(residual), e)
    coef = _times_pow2(coef, (e - t)[:, None])
    return _result(sel, coef.astype(dtype), residual_norm.astype(dtype), batch_shape)


def omp_gram(
    gram: jax.typing.ArrayLike,
    xy: jax.typing.ArrayLike,
    n_nonzero: int,
    *,
    norms_squared: jax.typing.ArrayLike | None = None,
    tol: jax.typing.ArrayLike = 0.0,
    atom_mask: jax.typing.ArrayLike | None = None,
    selection: Selection = "abs",
) -> OMPResult:
    """OMP from the Gram matrix ``DᵀD`` and the correlations ``Dᵀy``.

    The same pursuit as :func:`omp` (SGFR eq. 2-5, Algorithm 1; Batch-OMP of
    Rubinstein et al. 2008) for callers that already hold ``G = DᵀD`` and ``Dᵀy``,
    like scikit-learn's ``orthogonal_mp_gram``: it never touches the m-dimensional
    signals, so its cost does not depend on m.

    Args:
      gram: (K, K) float, symmetric positive semi-definite ``DᵀD``.
      xy: (..., K) float, ``Dᵀy`` for each signal.
      n_nonzero: static int s, 1 <= s <= K.
      norms_squared: optional (...) float, ``‖y‖₂²`` per signal. Needed for a
        tolerance stop (``tol > 0``) and for ``residual_norm``.
      tol: scalar >= 0, residual-norm tolerance (not squared, unlike scikit-learn).
      atom_mask: optional (..., K) bool, broadcastable to the batch.
      selection: ``"abs"`` (classic) or ``"signed"`` (SGFR eq. 3); see :func:`omp`.

    Returns:
      :class:`OMPResult`; ``residual_norm`` is ``sqrt(max(‖y‖² - coefᵀDᵀy, 0))``
      (the least-squares identity; it loses relative accuracy when the residual is
      tiny compared with ``‖y‖``) or ``None`` without ``norms_squared``.

    Raises:
      ValueError: bad shapes, an empty ``gram`` (K = 0), ``n_nonzero`` outside
        1..K, ``tol`` not a scalar or negative, ``tol > 0`` without
        ``norms_squared``, negative ``norms_squared``, NaN or inf in concrete inputs.
      TypeError: non-floating inputs, non-bool ``atom_mask``, non-real ``tol``.

    Note:
      Differentiable w.r.t. ``gram``, ``xy`` and ``norms_squared`` on the selected
      support, as for :func:`omp`. ``gram`` is used as given (it is not symmetrised).
      As in :func:`omp`, the pursuit runs on inputs scaled by powers of two (``gram``
      by one near its largest entry, each signal's ``xy`` and ``norms_squared`` by
      one set by ``norms_squared``, or by ``xy`` when that is larger or not given),
      which is exact and keeps large finite inputs from overflowing; float16 and
      bfloat16 are computed in float32; NaN or inf in traced inputs give NaN
      ``coef`` (and ``residual_norm``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.sparse import omp_gram
      >>> D = jnp.eye(3)
      >>> y = jnp.array([[1.0, 0.0, 2.0]])
      >>> omp_gram(D.T @ D, y @ D, 1).support.tolist()
      [[2]]
    """
    fn = "omp_gram"
    gram = _checks.as_float_array(fn, "gram", gram)
    xy = _checks.as_float_array(fn, "xy", xy, min_rank=1)
    _checks.check_rank(fn, "gram", gram, 2, "K, K")
    num_atoms = gram.shape[0]
    if gram.shape != (num_atoms, num_atoms) or xy.shape[-1] != num_atoms:
        raise ValueError(
            f"{fn}: gram must be (K, K) with K == xy.shape[-1] = {xy.shape[-1]}; got "
            f"{tuple(gram.shape)}."
        )
    _check_atoms(fn, "gram", num_atoms, gram.shape)
    n_nonzero = _check_common(fn, n_nonzero, num_atoms, tol, selection)
    batch_shape = xy.shape[:-1]
    num_signals = int(np.prod(batch_shape, dtype=int))
    dtype = jnp.promote_types(gram.dtype, xy.dtype)
    if norms_squared is None:
        if not _checks.is_concrete(tol) or float(np.asarray(tol)) != 0.0:
            raise ValueError(f"{fn}: tol > 0 needs norms_squared (‖y‖² per signal).")
    else:
        norms_squared = _checks.as_float_array(fn, "norms_squared", norms_squared)
        if norms_squared.shape != batch_shape:
            raise ValueError(
                f"{fn}: norms_squared must have the batch shape of xy {batch_shape}; "
                f"got {tuple(norms_squared.shape)}."
            )
        _checks.check_finite(fn, "norms_squared", norms_squared)
        if _checks.is_concrete(norms_squared) and norms_squared.size:
            with jax.ensure_compile_time_eval():
                lowest = float(jnp.min(norms_squared))
            if lowest < 0:
                raise ValueError(
                    f"{fn}: norms_squared must be >= 0 (‖y‖² per signal); got a "
                    f"minimum of {lowest}."
                )
        dtype = jnp.promote_types(dtype, norms_squared.dtype)
    _checks.check_finite(fn, "gram", gram)
    _checks.check_finite(fn, "xy", xy)
    allowed = _atom_mask(fn, atom_mask, batch_shape, num_atoms)
    work = _work_dtype(dtype)
    gram = gram.astype(work)
    flat_xy = xy.astype(work).reshape(num_signals, num_atoms)
    # Scale-free pursuit, as in omp: D' = D 2^-h (G' = G 2^-2h) and y' = y 2^-e per
    # signal (xy' = xy 2^-(h+e), ‖y'‖² = ‖y‖² 2^-2e), so c = c' 2^(e-h). e is set by
    # ‖y‖ when it is known and by the correlations otherwise (or if they are larger).
    h = _exponent(jnp.max(jnp.abs(gram), initial=0.0)) // 2
    e = _exponent(jnp.max(jnp.abs(flat_xy), axis=-1, initial=0.0)) - h
    if norms_squared is not None:
        norms_sq = norms_squared.astype(work).reshape(-1)
        e = jnp.maximum(e, (_exponent(jnp.abs(norms_sq)) + 1) // 2)
    bound = _max_shift(work)
    e = jnp.clip(e, -bound, bound)
    gram = _times_pow2(gram, -2 * h)
    flat_xy = _times_pow2(flat_xy, -(h + e)[:, None])
    finite = _finite_rows(flat_xy) & jnp.all(jnp.isfinite(gram))
    if norms_squared is None:
        norms_sq = jnp.full((num_signals,), jnp.inf, work)
    else:
        norms_sq = _times_pow2(norms_sq, -2 * e)
        finite = finite & jnp.isfinite(norms_sq)
    sel, coef = _pursuit(
        gram,
        flat_xy,
        norms_sq,
        allowed,
        n_nonzero=n_nonzero,
        tol=_times_pow2(jnp.full((num_signals,), tol, work), -e),
        selection=selection,
    )
    coef = jnp.where(finite[:, None], coef, jnp.nan)  # NaN in, NaN out
    residual_norm = None
    if norms_squared is not None:
        res_sq = norms_sq - jnp.sum(coef * flat_xy, axis=-1)
        residual_norm = _times_pow2(_safe_sqrt(jnp.maximum(res_sq, 0.0)), e)
        residual_norm = residual_norm.astype(dtype)
    coef = _times_pow2(coef, (e - h)[:, None])
    return _result(sel, coef.astype(dtype), residual_norm, batch_shape)
