"""Random projections for nearest-neighbour search in fewer dimensions.

PatchCore's greedy coreset (:mod:`jad.methods.coreset`) runs on randomly projected
features. The two public implementations project differently (both reproduced here,
with their distributions; the random numbers are JAX's):

* official PatchCore (amazon-science/patchcore-inspection): a dense projection, the
  weights of a PyTorch ``nn.Linear(D, 128)`` at its default init, uniform in
  +-1/sqrt(D) (:func:`dense_random_projection`);
* anomalib: scikit-learn's ``SparseRandomProjection`` (Achlioptas/Li: density
  1/sqrt(D), entries +-sqrt(1/density)/sqrt(n_components)) to the
  Johnson-Lindenstrauss dimension for eps = 0.9 (:func:`sparse_random_projection`,
  :func:`johnson_lindenstrauss_dim`).

Matrices are (dim_in, dim_out) float32; project with ``features @ matrix``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jad import _checks

__all__ = [
    "dense_random_projection",
    "johnson_lindenstrauss_dim",
    "sparse_random_projection",
]


def johnson_lindenstrauss_dim(n_samples: int, *, eps: float = 0.9) -> int:
    """scikit-learn's ``johnson_lindenstrauss_min_dim`` (what anomalib projects to).

    Args:
      n_samples: number of points.
      eps: distortion, in (0, 1).

    Returns:
      ``int(4 ln(n) / (eps^2 / 2 - eps^3 / 3))``.

    Raises:
      TypeError: ``n_samples`` not an int, ``eps`` not a real number.
      ValueError: ``n_samples < 1`` or ``eps`` outside (0, 1).
    """
    fn = "johnson_lindenstrauss_dim"
    n_samples = _checks.check_int(fn, "n_samples", n_samples, low=1)
    _checks.check_real_scalar(fn, "eps", eps)
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"{fn}: eps must be in (0, 1); got {eps}.")
    return int(4 * math.log(n_samples) / (eps**2 / 2 - eps**3 / 3))


def _check_dims(fn: str, key, dim_in, dim_out) -> tuple[int, int]:
    _checks.check_key(fn, "key", key)
    return (
        _checks.check_int(fn, "dim_in", dim_in, low=1),
        _checks.check_int(fn, "dim_out", dim_out, low=1),
    )


def dense_random_projection(key: jax.Array, dim_in: int, dim_out: int) -> jax.Array:
    """(dim_in, dim_out) matrix with entries uniform in +-1/sqrt(dim_in).

    The distribution of PyTorch's default ``nn.Linear(dim_in, dim_out)`` weights, which
    official PatchCore uses as its projection.

    Args:
      key: PRNG key.
      dim_in: input dimension D.
      dim_out: output dimension (128 in official PatchCore).

    Returns:
      float32 (dim_in, dim_out) array; project with ``features @ matrix``.

    Raises:
      TypeError: ``key`` not one PRNG key; ``dim_in`` or ``dim_out`` not an int.
      ValueError: ``dim_in`` or ``dim_out`` < 1.
    """
    dim_in, dim_out = _check_dims("dense_random_projection", key, dim_in, dim_out)
    bound = 1.0 / math.sqrt(dim_in)
    return jax.random.uniform(key, (dim_in, dim_out), jnp.float32, -bound, bound)


def sparse_random_projection(key: jax.Array, dim_in: int, dim_out: int) -> jax.Array:
    """Achlioptas/Li sparse projection as scikit-learn's ``SparseRandomProjection``.

    Density 1/sqrt(dim_in); non-zero entries are +-sqrt(1/density)/sqrt(dim_out).

    Args:
      key: PRNG key.
      dim_in: input dimension D.
      dim_out: output dimension (anomalib: :func:`johnson_lindenstrauss_dim`).

    Returns:
      float32 (dim_in, dim_out) array (stored dense).

    Raises:
      TypeError: ``key`` not one PRNG key; ``dim_in`` or ``dim_out`` not an int.
      ValueError: ``dim_in`` or ``dim_out`` < 1.
    """
    dim_in, dim_out = _check_dims("sparse_random_projection", key, dim_in, dim_out)
    density = 1.0 / math.sqrt(dim_in)
    k_mask, k_sign = jax.random.split(key)
    nonzero = jax.random.bernoulli(k_mask, density, (dim_in, dim_out))
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (dim_in, dim_out)), 1.0, -1.0)
    scale = math.sqrt(1.0 / density) / math.sqrt(dim_out)
    return jnp.where(nonzero, sign * scale, 0.0).astype(jnp.float32)
