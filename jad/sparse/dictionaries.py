"""Dictionary initialisers for K-SVD: DCT, Haar and random.

PSDL (appendix A.1, Table 8) initialises its per-location K-SVD dictionaries with a DCT
basis (the default), a Haar basis or random atoms. All initialisers return (m, K)
float32 arrays with unit-norm columns (atoms), for square (K = m) and overcomplete
(K > m) dictionaries. With ``separable=True`` the m-vector is read as a sqrt(m) x
sqrt(m) patch and the dictionary is the Kronecker product of two 1-D dictionaries with
sqrt(K) atoms, as in PSDL's code (sparselandtools' ``DCTDictionary(d, d)``, with
m = K = d²) and in ksvdbox's ``odct2dict``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks

__all__ = ["dct_dictionary", "haar_dictionary", "random_dictionary"]


def _normalise_columns(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)


def _dims(fn: str, m, num_atoms, separable: bool) -> tuple[int, int]:
    m = _checks.check_int(fn, "m", m, low=1)
    num_atoms = _checks.check_int(fn, "K", num_atoms, low=m)
    if separable:
        side, atoms_side = math.isqrt(m), math.isqrt(num_atoms)
        if side * side != m or atoms_side * atoms_side != num_atoms:
            raise ValueError(
                f"{fn}: separable=True needs square m and K (a d x d patch); got "
                f"m={m}, K={num_atoms}."
            )
    return m, num_atoms


def _separable(build, m: int, num_atoms: int, separable: bool) -> jax.Array:
    if separable:
        one_d = build(math.isqrt(m), math.isqrt(num_atoms))
        matrix = np.kron(one_d, one_d)  # atom p*sqrt(K)+q = a_p ⊗ a_q (row-major)
    else:
        matrix = build(m, num_atoms)
    return jnp.asarray(matrix, jnp.float32)


def _dct_1d(m: int, num_atoms: int) -> np.ndarray:
    # DCT-II atoms cos(π (i + 1/2) k / K), k = 0..K-1: for K = m the orthonormal DCT-II
    # basis, for K > m a finer frequency grid (sparselandtools' overcomplete IDCT-II).
    i = np.arange(m)[:, None] + 0.5
    k = np.arange(num_atoms)[None, :]
    return _normalise_columns(np.cos(np.pi * i * k / num_atoms))


def dct_dictionary(m: int, K: int, *, separable: bool = False) -> jax.Array:  # noqa: N803
    """DCT-II dictionary: orthonormal when square, a finer frequency grid when K > m.

    PSDL's default initialiser (appendix A.1): atom k samples ``cos(π (i + ½) k / K)``
    at i = 0..m-1, normalised to unit norm. For K = m this is exactly the orthonormal
    DCT-II basis (the columns of the inverse DCT-II matrix).

    Args:
      m: signal dimension (rows), m >= 1.
      K: number of atoms (columns), K >= m.
      separable: build the 2-D separable DCT of a sqrt(m) x sqrt(m) patch as
        ``kron(C, C)`` with C the 1-D (sqrt(m), sqrt(K)) dictionary, atom
        ``p·sqrt(K) + q = c_p ⊗ c_q``. This is what PSDL's code uses
        (sparselandtools ``DCTDictionary(d, d)``) with m = K = d².

    Returns:
      (m, K) float32 array with unit-norm columns.

    Raises:
      ValueError: m < 1, K < m, or non-square m, K with ``separable=True``.
      TypeError: m or K not an int.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.sparse import dct_dictionary
      >>> D = dct_dictionary(8, 8)
      >>> bool(jnp.allclose(D.T @ D, jnp.eye(8), atol=1e-6))
      True
    """
    m, num_atoms = _dims("dct_dictionary", m, K, separable)
    return _separable(_dct_1d, m, num_atoms, separable)


def _haar_basis(m: int) -> list[np.ndarray]:
    # Unbalanced Haar basis (Girardi & Sweldens): the constant atom, then for every
    # interval of a recursive halving (left part floor(n/2)) the atom that is +1/n_l on
    # the left half and -1/n_r on the right half. Orthonormal for any m; for m a power
    # of two it is the classic Haar wavelet basis, coarse to fine.
    atoms = [np.full(m, 1.0)]
    intervals = [(0, m)]
    while intervals:
        nxt = []
        for lo, hi in intervals:
            if hi - lo < 2:
                continue
            mid = lo + (hi - lo) // 2
            atom = np.zeros(m)
            atom[lo:mid] = 1.0 / (mid - lo)
            atom[mid:hi] = -1.0 / (hi - mid)
            atoms.append(atom)
            nxt += [(lo, mid), (mid, hi)]
        intervals = nxt
    return atoms


def _haar_1d(m: int, num_atoms: int) -> np.ndarray:
    basis = _haar_basis(m)
    atoms = list(basis)
    shift = 1
    # Overcomplete: circularly shifted copies of the wavelets (a translation-invariant
    # Haar frame), smallest shifts first, until K atoms.
    while len(atoms) < num_atoms and shift < m:
        atoms += [np.roll(a, shift) for a in basis[1:]]
        shift += 1
    while len(atoms) < num_atoms:  # only for K > m·(m-1)+1: repeat the frame
        atoms += atoms[: num_atoms - len(atoms)]
    return _normalise_columns(np.stack(atoms[:num_atoms], axis=1))


def haar_dictionary(m: int, K: int, *, separable: bool = False) -> jax.Array:  # noqa: N803
    """Haar wavelet dictionary: orthonormal when square, shifted wavelets when K > m.

    One of PSDL's initialisers (appendix A.1, Table 8). Square dictionaries are the
    (unbalanced, for m not a power of two) Haar basis: the constant atom, then
    difference-of-boxes atoms from coarse to fine; they are orthonormal for every m.
    Overcomplete dictionaries append circularly shifted copies of the wavelets.

    Args:
      m: signal dimension, m >= 1.
      K: number of atoms, K >= m.
      separable: 2-D separable Haar of a sqrt(m) x sqrt(m) patch, ``kron(H, H)``.

    Returns:
      (m, K) float32 array with unit-norm columns.

    Raises:
      ValueError: m < 1, K < m, or non-square m, K with ``separable=True``.
      TypeError: m or K not an int.

    Note:
      sparselandtools' overcomplete Haar (the library PSDL uses) pads the transform
      with zero atoms; jad uses shifted wavelets instead so that every atom is usable.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.sparse import haar_dictionary
      >>> H = haar_dictionary(6, 6)
      >>> bool(jnp.allclose(H.T @ H, jnp.eye(6), atol=1e-6))
      True
    """
    m, num_atoms = _dims("haar_dictionary", m, K, separable)
    return _separable(_haar_1d, m, num_atoms, separable)


def random_dictionary(key: jax.Array, m: int, K: int) -> jax.Array:  # noqa: N803
    """Random dictionary with i.i.d. Gaussian atoms normalised to unit norm.

    PSDL's "Random" initialiser (appendix A.1). Unlike sparselandtools' random
    dictionary (uniform positive entries, Kronecker-squared), the atoms are isotropic:
    uniformly distributed on the unit sphere.

    Args:
      key: one JAX PRNG key (``jax.random.key(seed)`` or a raw uint32 (2,) key).
      m: signal dimension.
      K: number of atoms (any K >= 1; K < m gives an undercomplete dictionary).

    Returns:
      (m, K) float32 array with unit-norm columns.

    Raises:
      TypeError: m or K not an int, ``key`` not one PRNG key.
      ValueError: m or K < 1.

    Example:
      >>> import jax
      >>> from jad.sparse import random_dictionary
      >>> random_dictionary(jax.random.key(0), 4, 6).shape
      (4, 6)
    """
    _checks.check_key("random_dictionary", "key", key)
    m = _checks.check_int("random_dictionary", "m", m, low=1)
    num_atoms = _checks.check_int("random_dictionary", "K", K, low=1)
    atoms = jax.random.normal(key, (m, num_atoms), jnp.float32)
    return atoms / jnp.linalg.norm(atoms, axis=0, keepdims=True)
