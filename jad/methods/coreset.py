"""Greedy coreset subsampling (k-center greedy), PatchCore's memory-bank reduction.

PatchCore (Roth et al. 2022, Alg. 1) reduces its memory bank to a fraction of the
training patches by greedy farthest-point selection on randomly projected features:
repeatedly take the point farthest from everything selected so far. Two public variants
are reproduced (amazon-science/patchcore-inspection and anomalib):

* ``"official"`` (``ApproximateGreedyCoresetSampler``): a dense projection to 128
  dimensions (PyTorch ``Linear`` default init, uniform in +-1/sqrt(D)); the running
  distance starts as the mean distance to 10 random points, which are *not* selected;
* ``"anomalib"`` (``KCenterGreedy``): a sparse Johnson-Lindenstrauss projection
  (eps = 0.9; density 1/sqrt(D), entries +-sqrt(1/density)/sqrt(n_components)); one
  random first point, which *is* selected.

Project the points first with :mod:`jad.ops.projections`. The loop runs on device
(``lax.fori_loop``, no host synchronisation per point) and keeps only the (N,) vector
of distances to the selection. Distances are Euclidean, computed as
``sqrt(sum((x - c)^2))``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks

__all__ = ["CoresetEstimate", "greedy_coreset"]


def _distances(points, center):
    diff = points - center
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


@jax.jit
def _mean_distance(points, starts):
    """(N,) mean distance to ``starts``: one (N,) accumulator, no (S, N, d) array."""

    def body(i, total):
        return total + _distances(points, points[starts[i]])

    total = jax.lax.fori_loop(
        0, starts.shape[0], body, jnp.zeros(points.shape[:1], points.dtype)
    )
    return total / starts.shape[0]


_MAX_BLOCK = 4096  # picks per compiled call at most (the size of its index buffer)
_FIRST_BLOCK = 4  # picks of the first call (which also compiles)
_BLOCK_SECONDS = 1.0  # wall time aimed at per call: progress and Ctrl-C this often
_ESTIMATE_SECONDS = 3.0  # picks timed (after compilation) before the estimate


@functools.partial(jax.jit, static_argnames=("size",))
def _greedy_block(points, min_d, count, size):
    """``count`` (traced, <= ``size``) greedy picks from the running distances."""

    def body(i, carry):
        min_d, selected = carry
        idx = jnp.argmax(min_d).astype(jnp.int32)
        selected = selected.at[i].set(idx)
        min_d = jnp.minimum(min_d, _distances(points, points[idx]))
        return min_d, selected

    selected = jnp.zeros((size,), jnp.int32)
    return jax.lax.fori_loop(0, count, body, (min_d, selected))


class CoresetEstimate(NamedTuple):
    """What a greedy coreset will cost, measured on its first picks.

    Attributes:
      num_points: N, the points to select from.
      num_select: picks to make.
      seconds_per_pick: measured wall time of one pick (after compilation).
      seconds: estimated time of all picks.
    """

    num_points: int
    num_select: int
    seconds_per_pick: float
    seconds: float


def _greedy(points, initial, n_select, progress, report):
    """The greedy loop in timed blocks, one host wait per block.

    The device never waits on the host within a block. Block sizes adapt to the
    measured speed so that each takes about ``_BLOCK_SECONDS``: the progress bar
    moves and Ctrl-C is honoured at least that often, whatever the bank size and
    device; one compilation serves every block (the pick count is traced). After
    about three seconds of timed picks (or at the end) ``report`` (if given)
    receives a :class:`CoresetEstimate`.
    Under a caller's ``jit`` (tracers) it is one loop.
    """
    if not _checks.is_concrete(points):
        return _greedy_block(points, initial, n_select, n_select)[1]
    from tqdm.auto import tqdm

    size = min(_MAX_BLOCK, n_select)
    count, done, blocks, min_d = min(_FIRST_BLOCK, size), 0, [], initial
    timed_picks, timed_seconds, reported = 0, 0.0, False
    with tqdm(
        total=n_select, desc="coreset", unit="point", disable=not progress
    ) as bar:
        while done < n_select:
            count = min(count, n_select - done)
            start = time.perf_counter()
            min_d, selected = _greedy_block(points, min_d, count, size)
            # Sliced on the host: a device slice would compile once per count.
            blocks.append(np.asarray(selected)[:count])
            seconds = time.perf_counter() - start
            done += count
            bar.update(count)
            if blocks[1:]:  # the first call also compiled: not timed
                timed_picks += count
                timed_seconds += seconds
                if not reported and (timed_seconds >= _ESTIMATE_SECONDS
                                     or done == n_select):
                    reported = True
                    per_pick = timed_seconds / timed_picks
                    if report is not None:
                        report(CoresetEstimate(points.shape[0], n_select, per_pick,
                                               per_pick * n_select))
            # Aim at _BLOCK_SECONDS per call, growing at most 4x at a time.
            rate = seconds / count
            count = max(1, min(size, 4 * count, int(_BLOCK_SECONDS / max(rate, 1e-9))))
    return jnp.asarray(np.concatenate(blocks))


def greedy_coreset(
    points,
    n_select: int,
    *,
    key: jax.Array | None = None,
    variant: str = "official",
    num_starting_points: int = 10,
    starts=None,
    progress: bool = False,
    report: Callable[[CoresetEstimate], None] | None = None,
) -> jax.Array:
    """Indices of a greedy k-center coreset of ``points`` (already projected).

    Args:
      points: (N, d) float array (project first with :mod:`jad.ops.projections`).
      n_select: number of indices to return, 1 <= n_select <= N (static).
      key: PRNG key for the random start (unused when ``starts`` is given).
      variant: ``"official"`` (start from the mean distance to
        ``num_starting_points`` random points, which are not selected) or
        ``"anomalib"`` (one random first point, selected first).
      num_starting_points: for ``"official"`` (clipped to N).
      starts: explicit start indices instead of random ones: (num_starting_points,)
        for ``"official"``, a single index for ``"anomalib"`` (to reproduce another
        implementation's run exactly).
      progress: show a progress bar. The selection runs in blocks timed to take
        about a second each (a host wait per block, none per pick), so the bar
        moves and Ctrl-C stops the selection at least that often.
      report: called once, after about three seconds of picks (or at the end),
        with a :class:`CoresetEstimate` of the whole selection (time per pick
        measured on this device); e.g. to warn that a fit will be long.

    Returns:
      (n_select,) int32 indices into ``points``, in selection order (distinct unless
      the points have duplicates and n_select exceeds the distinct count).

    Raises:
      ValueError: bad ``points`` rank, ``n_select`` or ``variant``; neither ``key``
        nor ``starts``; ``starts`` of the wrong shape or out of [0, N).
      TypeError: non-float ``points``, non-integer ``starts``.
    """
    fn = "greedy_coreset"
    points = _checks.as_float_array(fn, "points", points)
    _checks.check_rank(fn, "points", points, 2, "N, d")
    n = points.shape[0]
    n_select = _checks.check_int(fn, "n_select", n_select, low=1, high=n)
    _checks.check_choice(fn, "variant", variant, ("official", "anomalib"))
    if starts is None and key is None:
        raise ValueError(f"{fn}: give a PRNG key or explicit starts.")
    if starts is not None:
        starts = jnp.asarray(starts)
        expected = 1 if variant == "anomalib" else None
        if starts.ndim > 1 or starts.size == 0 or expected not in (None, starts.size):
            raise ValueError(
                f"{fn}: starts must be "
                + ("one index" if expected else "a non-empty 1-D array of indices")
                + f" for variant {variant!r}; got shape {tuple(starts.shape)}."
            )
        if not jnp.issubdtype(starts.dtype, jnp.integer):
            raise TypeError(
                f"{fn}: starts must be integer indices; got {starts.dtype}."
            )
        # Out-of-range indices would be clamped silently by JAX's gather.
        if _checks.is_concrete(starts) and not bool(
            jnp.all((starts >= 0) & (starts < n))
        ):
            raise ValueError(
                f"{fn}: starts must be indices in [0, {n}); got "
                f"{jnp.ravel(starts).tolist()}."
            )
    if variant == "official":
        if starts is None:
            count = min(
                _checks.check_int(fn, "num_starting_points", num_starting_points,
                                  low=1),
                n,
            )
            starts = jax.random.choice(key, n, (count,), replace=False)
        starts = jnp.atleast_1d(jnp.asarray(starts, jnp.int32))
        initial = _mean_distance(points, starts)
        return _greedy(points, initial, n_select, progress, report)
    if starts is None:
        first = jax.random.randint(key, (), 0, n, jnp.int32)
    else:
        first = jnp.asarray(starts, jnp.int32).reshape(())
    # Step 0 must select ``first``: it alone starts at +inf, the others at the largest
    # finite value, which the first update replaces by their distance to ``first``.
    initial = jnp.where(jnp.arange(n) == first, jnp.inf, jnp.finfo(points.dtype).max)
    return _greedy(points, initial, n_select, progress, report)
