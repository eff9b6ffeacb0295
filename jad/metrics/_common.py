"""Input validation and the one sort shared by jad's metrics (host-side utilities).

Metrics are evaluation utilities, run once per test set: they take numpy or JAX arrays,
work on the host in numpy with int64 counts and float64 sums, and return Python floats
or numpy arrays. They are not jittable or differentiable. The only O(N log N) step is a
sort of scratch copies of the scores: numpy's sort on a CPU (about 7x faster than XLA's
CPU sort for 1e7 float32 values, measured), ``jnp.sort`` on the accelerator when JAX's
default backend is a GPU or TPU; everything after it is O(P log N) for P positives.

On a CPU the scores are cut into one contiguous chunk per core; each core selects and
sorts its chunk (numpy's sort releases the GIL) and the sorted chunks are never merged:
:class:`SortedRuns` answers the questions the metrics ask (how many scores lie below a
value, the k-th largest score) by summing binary searches over the runs.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

# None: sort on the accelerator when JAX's default backend is not the CPU. Tests set it
# to True to run the device path on a CPU.
_DEVICE_SORT: bool | None = None
# Smallest chunk worth a thread of its own (tests lower it to exercise several runs).
_MIN_CHUNK = 1 << 20

T = TypeVar("T")


def as_scores(fn: str, name: str, x) -> np.ndarray:
    """Returns ``x`` as a float32 or float64 numpy array, refusing NaN and inf.

    The check every metric runs on its ``scores``/``maps``, public as
    ``jad.metrics.as_scores`` for code that takes the same inputs (``jad.viz``).
    float16 and bfloat16 are widened to float32 (exactly, so ties are kept). Integer
    and boolean scores are refused (``TypeError``): scores are continuous and an
    integer array is usually a mask passed in the wrong place.

    Args:
      fn: the caller's name, which error messages start with.
      name: the argument's name, for the messages.
      x: floating array of any shape (numpy, JAX, or a nested list).

    Returns:
      ``x`` as a numpy array of the same shape, float32 or float64 (not copied when
      it already is one).

    Raises:
      TypeError: ``x`` is not a floating array.
      ValueError: ``x`` holds NaN or inf.

    Example:
      >>> import numpy as np
      >>> from jad.metrics import as_scores
      >>> as_scores("my_metric", "maps", np.ones(3, np.float16)).dtype
      dtype('float32')
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

    The check every metric runs on its ``labels``/``masks``, public as
    ``jad.metrics.as_binary`` for code that takes the same inputs (``jad.viz``).
    Masks read from PNG files are often 0/255: they are refused with a hint rather
    than guessed at.

    Args:
      fn: the caller's name, which error messages start with.
      name: the argument's name, for the messages.
      x: bool, integer or floating array of any shape (numpy, JAX, or a nested
        list) whose values are 0 or 1.

    Returns:
      ``x != 0`` as a bool numpy array of the same shape.

    Raises:
      TypeError: ``x`` is not a bool or numeric array.
      ValueError: a value other than 0 and 1.

    Example:
      >>> from jad.metrics import as_binary
      >>> as_binary("my_metric", "masks", [0, 1, 1]).tolist()
      [False, True, True]
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
    """Returns ``value`` as a float in (0, 1] (any real number type but bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a float in (0, 1]; got {value!r}.")
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{fn}: {name} must be in (0, 1]; got {value}.")
    return value


def _device_sorting() -> bool:
    return jax.default_backend() != "cpu" if _DEVICE_SORT is None else _DEVICE_SORT


def _num_workers() -> int:
    """Threads the metrics use: the cores this process may run on.

    The environment variable ``JAD_METRICS_THREADS`` (a positive integer) caps it.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    limit = os.environ.get("JAD_METRICS_THREADS", "").strip()
    if not limit:
        return cores
    if not limit.isdigit() or int(limit) < 1:
        raise ValueError(
            f"JAD_METRICS_THREADS must be a positive integer; got {limit!r}."
        )
    return min(cores, int(limit))


def map_chunks(fn: Callable[[slice], T], size: int) -> list[T]:
    """``fn`` applied to contiguous slices covering ``range(size)``, one per core.

    The slices are in order and each has at least ``_MIN_CHUNK`` elements (one slice
    for small inputs, or when sorting on an accelerator); they run on a thread pool,
    so ``fn`` should spend its time in numpy calls that release the GIL (sort).
    """
    workers = 1 if _device_sorting() else _num_workers()
    parts = max(1, min(workers, size // _MIN_CHUNK))
    bounds = np.linspace(0, size, parts + 1).astype(np.int64)
    slices = [
        slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return map_items(fn, slices)


def map_items(fn: Callable[[Any], T], items: Sequence) -> list[T]:
    """``[fn(item) for item in items]``, the items on a thread pool (one per core)."""
    if len(items) <= 1 or _device_sorting():
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(len(items), _num_workers())) as pool:
        return list(pool.map(fn, items))


class SortedRuns(NamedTuple):
    """A multiset of scores held as ascending runs (one per sorted chunk), unmerged.

    Attributes:
      runs: ascending 1-D arrays of one dtype; together they are the multiset.
    """

    runs: tuple[np.ndarray, ...]

    @property
    def size(self) -> int:
        return sum(run.size for run in self.runs)

    def count_below(self, values: np.ndarray) -> np.ndarray:
        """(len(values),) int64: how many scores are < each value."""
        return self.counts_below(values)[0]

    def counts_below(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(# scores < v, # scores <= v) for each v in ``values``, int64 arrays.

        One binary search per run and value (the runs searched on a thread pool);
        the "<=" count needs a second search only for values that occur in a run.
        """
        values = np.asarray(values)

        def search(run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            below = np.searchsorted(run, values, side="left")
            if run.size == 0:
                return below, below
            tied = run[np.minimum(below, run.size - 1)] == values
            below_or_tied = below.copy()
            below_or_tied[tied] = np.searchsorted(run, values[tied], side="right")
            return below, below_or_tied

        if values.size >= _MIN_CHUNK // 16:  # enough work for a thread per run
            found = map_items(search, self.runs)
        else:
            found = [search(run) for run in self.runs]
        below = np.zeros(values.shape, np.int64)
        below_or_tied = np.zeros(values.shape, np.int64)
        for lo, hi in found:
            below += lo
            below_or_tied += hi
        return below, below_or_tied

    def kth_largest(self, k: int):
        """The k-th largest score, counting repeats (k in 1..size).

        Binary search, run by run, for the element whose ascending position range
        ``[#scores < v, #scores <= v)`` holds ``size - k``: O(runs^2 log^2 n).
        """
        rank = self.size - k
        if not 0 <= rank < self.size:
            raise ValueError(f"k must be in 1..{self.size}; got {k}.")
        for run in self.runs:
            lo, hi = 0, run.size
            while lo < hi:
                mid = (lo + hi) // 2
                below, below_or_tied = self.counts_below(run[mid : mid + 1])
                if rank < int(below[0]):
                    hi = mid
                elif rank >= int(below_or_tied[0]):
                    lo = mid + 1
                else:
                    return run[mid]
        raise AssertionError("unreachable: the runs are not sorted")

    def distinct(self) -> np.ndarray:
        """The distinct scores, ascending."""
        return distinct(merge_sorted([distinct(run)[0] for run in self.runs]))[0]


def merge_sorted(runs: Sequence[np.ndarray]) -> np.ndarray:
    """One ascending array from ascending runs (timsort merges runs in linear time)."""
    if len(runs) == 1:
        return runs[0]
    return np.sort(np.concatenate(runs), kind="stable")


def sort_scratch(values: np.ndarray) -> np.ndarray:
    """Sorts ``values`` ascending; ``values`` is a scratch copy owned by the caller.

    On a CPU the sort is in place (numpy). On an accelerator the array goes to the
    device, is sorted with ``jnp.sort`` (float64 kept under a local x64 scope) and
    comes back; NaN never occurs (inputs are checked), and -0.0 == 0.0 compare equal
    in both sorts, so ties are the same.
    """
    if not _device_sorting() or values.size < 2:
        values.sort()
        return values
    scope = (
        jax.enable_x64(True) if values.dtype == np.float64 else contextlib.nullcontext()
    )
    with scope:
        return np.asarray(_device_sort(jnp.asarray(values)))


_device_sort = jax.jit(jnp.sort)


def distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array (either order) and each one's last index."""
    last = np.empty(sorted_values.size, bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=last[:-1])
    last[-1:] = True
    ends = np.flatnonzero(last)
    return sorted_values[ends], ends
