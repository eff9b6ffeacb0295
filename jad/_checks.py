"""Argument validation shared by jad's public functions.

All checks run in Python before tracing. Shapes and dtypes are known at trace time, so
they also run under a caller's ``jit``/``vmap``; value checks (finiteness) only run when
the array is concrete (not a tracer). Every message names the function and the argument,
says what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float_array",
    "check_choice",
    "check_finite",
    "check_int",
    "check_key",
    "check_rank",
    "check_real_scalar",
    "is_concrete",
]


def is_concrete(x) -> bool:
    """True when ``x`` holds values (numpy array, concrete jax array), not a tracer."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(fn: str, name: str, x, *, min_rank: int = 0) -> jax.Array:
    """Returns ``x`` as a floating jax array, raising ``TypeError`` for other dtypes.

    Integer and boolean inputs are refused rather than cast: a dictionary or signal
    given
    as integers is almost always a mistake (e.g. uint8 images not yet normalised).
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(
            f"{fn}: {name} must be a floating array; got {type(x).__name__}."
        )
    try:
        dtype = jnp.result_type(x)
    except TypeError as err:
        raise TypeError(
            f"{fn}: {name} must be a floating array; got {type(x).__name__}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must have a floating dtype; got {dtype}.")
    x = jnp.asarray(x)
    if x.ndim < min_rank:
        raise ValueError(
            f"{fn}: {name} must have at least {min_rank} dimensions; got shape "
            f"{tuple(x.shape)}."
        )
    return x


def check_rank(fn: str, name: str, x, rank: int, letters: str) -> None:
    """Raises ``ValueError`` unless ``x.ndim == rank`` (``letters`` names the axes)."""
    if x.ndim != rank:
        raise ValueError(
            f"{fn}: {name} must be ({letters}); got shape {tuple(x.shape)}."
        )


def check_finite(fn: str, name: str, x) -> None:
    """Raises ``ValueError`` if a concrete ``x`` holds NaN or inf (no-op if traced).

    Where ``x`` lives (host or device) and without an ``x``-sized temporary: a
    finite sum proves every value finite; an overflowing sum of finite values falls
    back to the element test.
    """
    if not is_concrete(x):
        return
    xp = np if isinstance(x, np.ndarray) else jnp
    # Evaluated now even inside a caller's trace (x itself is concrete).
    with np.errstate(over="ignore", invalid="ignore"), jax.ensure_compile_time_eval():
        finite = bool(xp.isfinite(xp.sum(x))) or bool(xp.all(xp.isfinite(x)))
    if not finite:
        raise ValueError(f"{fn}: {name} contains NaN or inf values.")


def check_int(
    fn: str, name: str, value, *, low: int | None = None, high: int | None = None
) -> int:
    """Returns ``value`` as a Python int, checking ``low <= value <= high``.

    Static arguments (sparsity, iteration counts) must be Python or numpy integers, not
    arrays or floats: they fix shapes and loop counts.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{fn}: {name} must be a Python int (it is static); got "
            f"{type(value).__name__} {value!r}."
        )
    value = int(value)
    if low is not None and value < low or high is not None and value > high:
        bounds = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else f">= {low}"
            if low is not None
            else f"<= {high}"
        )
        raise ValueError(f"{fn}: {name} must be {bounds}; got {value}.")
    return value


def check_choice(fn: str, name: str, value, choices: Sequence[str]) -> str:
    """Raises ``ValueError`` unless ``value`` is one of ``choices`` (all listed)."""
    if value not in choices:
        raise ValueError(
            f"{fn}: {name} must be one of {', '.join(map(repr, choices))}; "
            f"got {value!r}."
        )
    return value


def check_key(fn: str, name: str, key) -> None:
    """Raises ``TypeError`` unless ``key`` is one JAX PRNG key.

    Accepts a typed key (``jax.random.key(seed)``, shape ``()``) or a raw one
    (``jax.random.PRNGKey(seed)``, uint32 of shape ``(2,)``); also on tracers.
    """
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype == jnp.uint32 and shape == (2,):
        return
    raise TypeError(
        f"{fn}: {name} must be one JAX PRNG key (jax.random.key(seed)); got "
        + (f"{type(key).__name__} {dtype} {shape}" if dtype is not None else repr(key))
        + "."
    )


def check_real_scalar(fn: str, name: str, value) -> None:
    """Raises unless ``value`` is one real number (a Python, numpy or jax scalar).

    ``TypeError`` for None, strings, bools, complex and other non-numbers,
    ``ValueError`` for arrays of another shape than ``()``. Type and shape only, so
    it also runs on tracers; range checks are the caller's (on concrete values).
    """
    dtype = None
    if not (value is None or isinstance(value, (str, bytes, bool, np.bool_))):
        try:
            dtype = jnp.result_type(value)
        except TypeError:
            pass
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(f"{fn}: {name} must be a real number; got {value!r}.")
    shape = value.shape if hasattr(value, "shape") else np.shape(value)
    if tuple(shape) != ():
        raise ValueError(f"{fn}: {name} must be a scalar; got shape {tuple(shape)}.")
