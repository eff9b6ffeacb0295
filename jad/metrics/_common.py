"""Input validation and the one sort shared by jad's metrics (host-side utilities).

Metrics are evaluation utilities, run once per test set: they take numpy or JAX arrays,
work on the host in numpy with int64 counts and float64 sums, and return Python floats
or numpy arrays. They are not jittable or differentiable. The only O(N log N) step is a
sort of a scratch copy of the scores: numpy's sort on a CPU (about 7x faster than XLA's
CPU sort for 1e7 float32 values, measured), ``jnp.sort`` on the accelerator when JAX's
default backend is a GPU or TPU; everything after it is O(P log N) for P positives.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

# None: sort on the accelerator when JAX's default backend is not the CPU. Tests set it
# to True to run the device path on a CPU.
_DEVICE_SORT: bool | None = None


def as_scores(fn: str, name: str, x) -> np.ndarray:
    """Returns ``x`` as a float32 or float64 numpy array, refusing NaN and inf.

    float16 and bfloat16 are widened to float32 (exactly, so ties are kept). Integer
    and boolean scores are refused (``TypeError``): scores are continuous and an
    integer array is usually a mask passed in the wrong place.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(
            f"{fn}: {name} must be a floating array; got {type(x).__name__}."
        )
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    try:
        dtype = jnp.result_type(x)
    except TypeError as err:
        raise TypeError(
            f"{fn}: {name} must be a floating array; got {type(x).__name__}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must have a floating dtype; got {dtype}.")
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    # A finite sum proves every value finite without an N-sized temporary; an
    # overflowing sum of finite values falls back to the exact test.
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(np.sum(x))) or bool(np.isfinite(x).all())
    if not finite:
        raise ValueError(f"{fn}: {name} contains NaN or inf values.")
    return x


def as_binary(fn: str, name: str, x) -> np.ndarray:
    """Returns ``x`` as a bool numpy array; accepts bool, or numbers that are 0 or 1.

    Masks read from PNG files are often 0/255: they are refused with a hint rather
    than guessed at.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(
            f"{fn}: {name} must be a bool or 0/1 array; got {type(x).__name__}."
        )
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    try:
        dtype = jnp.result_type(x)
    except TypeError as err:
        raise TypeError(
            f"{fn}: {name} must be a bool or 0/1 array; got {type(x).__name__}."
        ) from err
    x = np.asarray(x)
    if dtype == jnp.bool_:
        return x.astype(bool, copy=False)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"{fn}: {name} must be bool or 0/1 numbers; got {dtype}.")
    if x.size:
        lo, hi = x.min(), x.max()
        if jnp.issubdtype(dtype, jnp.integer):
            binary = lo >= 0 and hi <= 1
        else:
            binary = bool(((x == 0) | (x == 1)).all())
        if not binary:
            hint = " (a 0/255 image mask? pass mask > 0)" if hi == 255 else ""
            raise ValueError(
                f"{fn}: {name} must be binary (bool or 0/1); got values in "
                f"[{lo}, {hi}]{hint}."
            )
    return x != 0


def check_same_shape(fn: str, names: tuple[str, str], a, b) -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must have the same shape; got "
            f"{a.shape} and {b.shape}."
        )


def check_fraction(fn: str, name: str, value) -> float:
    """Returns ``value`` as a float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{fn}: {name} must be a float in (0, 1]; got {value!r}.")
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{fn}: {name} must be in (0, 1]; got {value}.")
    return value


def sort_scratch(values: np.ndarray) -> np.ndarray:
    """Sorts ``values`` ascending; ``values`` is a scratch copy owned by the caller.

    On a CPU the sort is in place (numpy). On an accelerator the array goes to the
    device, is sorted with ``jnp.sort`` (float64 kept under a local x64 scope) and
    comes back; NaN never occurs (inputs are checked), and -0.0 == 0.0 compare equal
    in both sorts, so ties are the same.
    """
    device = _DEVICE_SORT
    if device is None:
        device = jax.default_backend() != "cpu"
    if not device or values.size < 2:
        values.sort()
        return values
    scope = (
        jax.enable_x64(True) if values.dtype == np.float64 else contextlib.nullcontext()
    )
    with scope:
        return np.asarray(_device_sort(jnp.asarray(values)))


_device_sort = jax.jit(jnp.sort)


def distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an ascending array and the index of each one's last copy."""
    last = np.empty(sorted_values.size, bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=last[:-1])
    last[-1:] = True
    ends = np.flatnonzero(last)
    return sorted_values[ends], ends
