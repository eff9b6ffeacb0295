"""Gaussian statistics: Cholesky whitening and the Mahalanobis distance.

A Gaussian N(mu, Sigma) is held as its mean and the whitening matrix W = L^-1 of the
Cholesky factor L of Sigma (Sigma = L L^T): the squared Mahalanobis distance is then
``||W (x - mu)||^2`` (PaDiM's score, F2PAD eq. 7), one matrix-vector product, and
Sigma is never inverted. PaDiM fits one Gaussian per feature location; PSDL's 2-D
Gaussians per location and F2PAD's mixture prior reuse the same kernels, so both work
on any leading axes (``...``), broadcast between the arguments.

Products run at ``Precision.HIGHEST``: on GPUs the default float32 matmul (TF32)
would change the distances at 1e-3.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jad import _checks

__all__ = ["WhiteningResult", "cholesky_whitening", "mahalanobis"]


class WhiteningResult(NamedTuple):
    """The whitening of a covariance and the factor it comes from.

    Attributes:
      whitening: (..., d, d) lower-triangular W = L^-1.
      cholesky: (..., d, d) lower-triangular L, Sigma = L L^T (NaN where Sigma is not
        positive definite in the working precision).
    """

    whitening: jax.Array
    cholesky: jax.Array


def _check_square(fn: str, name: str, x) -> jax.Array:
    x = _checks.as_float_array(fn, name, x, min_rank=2)
    if x.shape[-1] != x.shape[-2] or x.shape[-1] < 1:
        raise ValueError(
            f"{fn}: {name} must be (..., d, d) with d >= 1; got shape {tuple(x.shape)}."
        )
    return x


def cholesky_whitening(covariance: jax.typing.ArrayLike) -> WhiteningResult:
    """The whitening matrix L^-1 of a covariance, by Cholesky and triangular solve.

    Regularise first (PaDiM adds 0.01 I to ``np.cov``): a singular covariance has no
    whitening.

    Args:
      covariance: (..., d, d) symmetric positive definite floating matrices, d >= 1
        (factorised as ``(covariance + covariance^T) / 2``, as
        ``jnp.linalg.cholesky`` does).

    Returns:
      :class:`WhiteningResult` ``(whitening, cholesky)``, both (..., d, d) of the
      input's dtype. A covariance that is not positive definite in the working
      precision gives NaN in both (check ``jnp.isfinite``); NaN propagates.

    Note:
      float16 and bfloat16 covariances are factorised in float32 (XLA has no
      half-precision Cholesky) and the results cast back.

    Raises:
      TypeError: non-floating ``covariance``.
      ValueError: ``covariance`` not (..., d, d) with d >= 1.

    Example:
      >>> import jax.numpy as jnp
      >>> cholesky_whitening(jnp.diag(jnp.array([4.0, 0.25]))).whitening.tolist()
      [[0.5, 0.0], [0.0, 2.0]]
    """
    covariance = _check_square("cholesky_whitening", "covariance", covariance)
    dtype = covariance.dtype
    covariance = covariance.astype(jnp.promote_types(dtype, jnp.float32))
    eye = jnp.eye(covariance.shape[-1], dtype=covariance.dtype)
    chol = jnp.linalg.cholesky(covariance)
    whitening = jax.lax.linalg.triangular_solve(
        chol, jnp.broadcast_to(eye, covariance.shape), left_side=True, lower=True
    )
    return WhiteningResult(whitening.astype(dtype), chol.astype(dtype))


def mahalanobis(
    whitening: jax.typing.ArrayLike,
    mean: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    *,
    squared: bool = False,
) -> jax.Array:
    """Mahalanobis distance ``||W (x - mu)||`` through the whitening matrix W = L^-1.

    PaDiM's anomaly score (F2PAD eq. 7 is its square). Leading axes broadcast: one
    Gaussian per location (``whitening`` (h, w, d, d), ``mean`` (h, w, d)) scores a
    batch ``x`` (B, h, w, d).

    Args:
      whitening: (..., d, d) floating whitening matrices (:func:`cholesky_whitening`).
      mean: (..., d) floating means.
      x: (..., d) floating points.
      squared: return the squared distance.

    Returns:
      (...) distances, the leading axes of the three arguments broadcast, in their
      common float dtype. Differentiable everywhere: at x = mu the distance is 0 with
      gradient 0 (not sqrt's infinite one); NaN in an input gives NaN (never the 0 of
      a perfectly normal point).

    Raises:
      TypeError: a non-floating argument; ``squared`` not a bool.
      ValueError: ``whitening`` not (..., d, d), ``mean`` or ``x`` not (..., d) with
        its d, or leading axes that do not broadcast.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.diag(jnp.array([0.5, 2.0]))  # Sigma = diag(4, 0.25)
      >>> mahalanobis(w, jnp.zeros(2), jnp.array([2.0, 0.0])).tolist()
      1.0
    """
    fn = "mahalanobis"
    whitening = _check_square(fn, "whitening", whitening)
    mean = _checks.as_float_array(fn, "mean", mean, min_rank=1)
    x = _checks.as_float_array(fn, "x", x, min_rank=1)
    if not isinstance(squared, (bool, jnp.bool_)):
        raise TypeError(f"{fn}: squared must be a bool; got {squared!r}.")
    d = whitening.shape[-1]
    for name, value in (("mean", mean), ("x", x)):
        if value.shape[-1] != d:
            raise ValueError(
                f"{fn}: {name} must be (..., {d}) like whitening (..., {d}, {d}); "
                f"got shape {tuple(value.shape)}."
            )
    try:
        jnp.broadcast_shapes(whitening.shape[:-2], mean.shape[:-1], x.shape[:-1])
    except ValueError:
        raise ValueError(
            f"{fn}: the leading axes of whitening {tuple(whitening.shape[:-2])}, mean "
            f"{tuple(mean.shape[:-1])} and x {tuple(x.shape[:-1])} do not broadcast."
        ) from None
    diff = x - mean
    z = jnp.einsum(
        "...ij,...j->...i", whitening, diff, precision=jax.lax.Precision.HIGHEST
    )
    sq = jnp.sum(z * z, axis=-1)
    if squared:
        return sq
    # Double where: sqrt's gradient is infinite at 0 (a point equal to the mean),
    # which would make the gradient NaN; there the distance is sq = 0 with gradient
    # 0. NaN (from NaN inputs) fails `sq > 0` and passes through as NaN: it is never
    # turned into the distance 0 of a perfectly normal location.
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq)
