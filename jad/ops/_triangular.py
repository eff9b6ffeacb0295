"""Small triangular solves that are safe to run side by side on CPU (internal).

XLA's CPU triangular solve (jaxlib 0.10: the LAPACK ``trsm`` FFI kernel, which LU
solves use too) can deadlock when two batched calls run at the same time in one
program: each hands its batch to the intra-op thread pool and waits, and on a 2-core
machine they wait for each other. Two independent OMP calls in one ``jit`` (PSDL's
``fusion="separate"``, one per level) hung that way. On CPU these helpers solve by
substitution in a ``lax.fori_loop`` instead (plain XLA, no custom call); on
accelerators they call ``jax.scipy.linalg.solve_triangular``.

The matrices here are OMP's s x s Cholesky factors (s <= a few hundred), one per
signal under vmap. The loop (unrolled by 4) keeps OMP and K-SVD at the library call's
speed within run-to-run noise (``experiments/bench_sparse.py --batching`` at C = 256,
s = 64 on a 2-core CPU: OMP 0.33-0.39 s against 0.31-0.38 s, K-SVD 0.97-1.05 s against
0.91-0.95 s, alternating runs). Each function takes one (s, s) factor and one (s,)
right-hand side; vmap batches them. They are differentiable (the loop has a static
trip count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _substitute(chol, b, *, transpose: bool):
    """Solves L x = b (``transpose=False``) or Lᵀ x = b by substitution.

    Unknowns not yet solved are zero in the carry, so each step is one full-length
    dot with a row of L (forward) or a column of L (backward, ``Lᵀ``'s row); the
    entries of the other triangle are never met with a non-zero unknown.
    """
    chol, b = jnp.asarray(chol), jnp.asarray(b)
    size = chol.shape[-1]

    def step(i, x):
        j = size - 1 - i if transpose else i
        line = chol[:, j] if transpose else chol[j]
        dot = jnp.matmul(line, x, precision=jax.lax.Precision.HIGHEST)
        return x.at[j].set((b[j] - dot) / chol[j, j])

    return jax.lax.fori_loop(0, size, step, jnp.zeros_like(b), unroll=4)


def solve_lower(chol, b, *, transpose: bool = False):
    """Solves L x = b, or Lᵀ x = b with ``transpose=True``.

    Args:
      chol: (s, s) lower triangular L with non-zero diagonal (its upper triangle is
        not read).
      b: (s,) right-hand side of chol's dtype.
      transpose: solve with Lᵀ (backward substitution) instead of L.

    Returns:
      (s,) solution.
    """
    if jax.default_backend() == "cpu":
        return _substitute(chol, b, transpose=transpose)
    return jax.scipy.linalg.solve_triangular(
        chol, b, lower=True, trans="T" if transpose else 0)


def cho_solve(chol, b):
    """Solves L Lᵀ x = b (``jax.scipy.linalg.cho_solve((chol, True), b)``).

    Args:
      chol: (s, s) lower Cholesky factor L.
      b: (s,) right-hand side.

    Returns:
      (s,) solution.
    """
    return solve_lower(chol, solve_lower(chol, b), transpose=True)
