"""PaDiM (Defard et al., ICPR 2021; F2PAD section III-B.3).

Each feature location (i, j) of the training images is modelled by a multivariate
Gaussian N(mu_ij, Sigma_ij); a test location's anomaly score is its Mahalanobis distance
(F2PAD eq. 7). Following the reference code (xiahaifeng1995's
PaDiM-Anomaly-Detection-Localization-master, the public PaDiM that the seed papers'
figures use):

* levels 1-3 concatenated on the grid of level 1, the coarser levels replicated by
  nearest neighbour (the reference's unfold/fold ``embedding_concat``);
* a fixed random subset of the concatenated channels: ``random.seed(1024)`` then
  ``random.sample(range(total), n_features)`` with Python's ``random`` module, which
  reproduces the reference's list exactly (100 channels for ResNet-18's 448, 550 for
  WRN-50's 1792; 100 otherwise, as anomalib does for other backbones);
* covariance ``np.cov`` (N - 1 normalisation) plus 0.01 I, accumulated over batches
  of training images (:func:`fit_batches`) with the numerically stable pairwise update
  of Chan, Golub and LeVeque, so the fit's memory does not grow with their number;
* the distance through the Cholesky factor L of Sigma: ``||L^-1 (f - mu)||``, with
  L^-1 obtained once at fit time by a triangular solve (never inverting Sigma itself),
  so scoring is one batched matrix-vector product per location; the reference takes
  the square root (``squared=False``), F2PAD eq. 7 uses the square (``squared=True``);
* map: bilinear to the image size, Gaussian blur sigma 4 (scipy ``reflect``); image
  score: the map's maximum (the reference min-max normalises maps over the test set
  first, which changes neither AUROC nor PRO; jad reports raw scores).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks, ops
from jad.methods.base import (
    Method,
    check_config_fields,
    check_instance,
    check_levels,
    check_postprocess,
    register,
)

__all__ = [
    "PaDiMConfig",
    "PaDiMState",
    "channel_subset",
    "embed",
    "fit",
    "PRESETS",
    "feature_loss",
    "fit_batches",
    "init",
    "score",
]

_DEFAULT_FEATURES = {448: 100, 1792: 550}


def channel_subset(total: int, n_features: int | None, *, seed: int = 1024) -> tuple:
    """The reference's random channel indices: ``random.seed(seed)``; ``sample``.

    Args:
      total: channels of the concatenated levels (448 for ResNet-18 levels 1-3).
      n_features: channels to keep; ``None`` for the reference's default (100 for 448,
        550 for 1792, else min(100, total)).
      seed: Python ``random`` seed (1024 in the reference).

    Returns:
      Tuple of ``n_features`` distinct ints in ``range(total)``, in sample order.

    Raises:
      TypeError: ``total``, ``n_features`` (when given) or ``seed`` not an int.
      ValueError: ``total`` < 1, ``n_features`` outside 1..total.
    """
    fn = "padim.channel_subset"
    total = _checks.check_int(fn, "total", total, low=1)
    seed = _checks.check_int(fn, "seed", seed)
    if n_features is None:
        n_features = _DEFAULT_FEATURES.get(total, min(100, total))
    n_features = _checks.check_int(fn, "n_features", n_features)
    if not 1 <= n_features <= total:
        raise ValueError(
            f"{fn}: n_features must be between 1 and {total}; got {n_features}."
        )
    rng = random.Random()
    rng.seed(seed)
    return tuple(rng.sample(range(total), n_features))


_BLOCK_BYTES = 1 << 28  # covariances merged / fitted per block (256 MB float32)


@dataclasses.dataclass(frozen=True)
class PaDiMConfig:
    """PaDiM settings (defaults: the reference code).

    Attributes:
      levels: backbone levels concatenated (1, 2, 3).
      n_features: random channels kept (``None``: 100 / 550 as the reference; an int;
        or ``0`` to keep every channel).
      seed: Python ``random`` seed of the channel subset (1024).
      regularization: added to the covariance diagonal (0.01).
      squared: squared Mahalanobis distance (F2PAD eq. 7) instead of the reference's
        plain distance.
      upsample, sigma, blur_mode, combine, align_corners: shared
        post-processing (see :func:`jad.methods.base.postprocess`).
    """

    levels: tuple[int, ...] = (1, 2, 3)
    n_features: int | None = None
    seed: int = 1024
    regularization: float = 0.01
    squared: bool = False
    upsample: str = "bilinear"
    sigma: float = 4.0
    blur_mode: str = "symmetric"
    combine: str = "mean"
    align_corners: bool = False

    def __post_init__(self):
        if not self.levels:
            raise ValueError("PaDiMConfig: levels must not be empty.")
        check_config_fields(
            "PaDiMConfig",
            self,
            ints=("seed",),
            floats=("regularization",),
            bools=("squared",),
        )
        object.__setattr__(self, "levels", tuple(int(x) for x in self.levels))
        if self.n_features is not None:
            _checks.check_int("PaDiMConfig", "n_features", self.n_features, low=0)
        if not float(self.regularization) > 0:
            raise ValueError(
                "PaDiMConfig: regularization must be > 0 (with fewer training images "
                f"than channels the covariance is singular); got {self.regularization}."
            )
        check_postprocess("PaDiMConfig", self)


@flax.struct.dataclass
class PaDiMState:
    """A fitted PaDiM: per-location Gaussians.

    Attributes:
      mean: (h, w, d) float32 means.
      whitening: (h, w, d, d) inverses L^-1 (lower triangular) of the Cholesky
        factors L of the regularised covariances (Sigma = L L^T), so that the squared
        Mahalanobis distance is ``||L^-1 (f - mu)||^2``. (Sigma itself, if needed,
        is ``inv(W) inv(W)^T``; it is not stored: at WRN-50 sizes it would double
        the state.)
      config: the :class:`PaDiMConfig` (static).
    """

    mean: jax.Array
    whitening: jax.Array
    config: PaDiMConfig = flax.struct.field(pytree_node=False)


def _concat(config: PaDiMConfig, features: dict) -> jax.Array:
    parts = [features[level] for level in config.levels]
    return jnp.concatenate(ops.align_levels(parts, method="nearest"), axis=-1)


def embed(config: PaDiMConfig, features: dict) -> jax.Array:
    """Concatenated levels on the finest grid, restricted to the random channels.

    Args:
      config: a :class:`PaDiMConfig`.
      features: dict level -> (B, h_l, w_l, C_l) containing ``config.levels``.

    Returns:
      (B, h, w, d) embeddings (d = the subset size, or all channels when
      ``n_features == 0``).

    Raises:
      TypeError: a level of non-floating features.
      ValueError: a level of ``config.levels`` missing from ``features``, not
        (B, h, w, C) with h, w, C >= 1, or levels of different batch sizes B (B = 0
        gives empty embeddings).
    """
    check_levels("padim.embed", config, features)
    concat = _concat(config, features)
    total = concat.shape[-1]
    if config.n_features == 0:
        return concat
    idx = np.asarray(channel_subset(total, config.n_features, seed=config.seed))
    return concat[..., idx]


class _Moments(NamedTuple):
    """Running statistics of the embeddings merged so far (host bookkeeping)."""

    count: int  # images merged
    mean: jax.Array  # (L, d) float32
    scatter: jax.Array  # (L, d, d) float32: sum_n (x_n - mean)(x_n - mean)^T
    largest: jax.Array  # () float32: the largest |x| seen, for the overflow message
    shape: tuple  # (h, w, d)


def _blocks(locations: int, d: int) -> tuple[int, int]:
    """(number, size) of equal location blocks of at most _BLOCK_BYTES of (d, d)."""
    num_blocks = -(-locations // max(1, _BLOCK_BYTES // (4 * d * d)))
    return num_blocks, -(-locations // num_blocks)


def _fresh(first, start, size):
    """(size,) mask of a block's locations not covered by the previous block.

    Blocks have one compiled size: the last one ends at the last location and
    overlaps its predecessor (``first < start``); only its new locations change.
    """
    return first + jnp.arange(size) >= start


@functools.partial(
    jax.jit, static_argnames=("num_blocks", "size"), donate_argnums=(0, 1, 2)
)
def _merge_batch(mean, scatter, largest, batch, weight, coef, *, num_blocks, size):
    """Merges a (B, h, w, d) batch into the (L, d) mean and (L, d, d) scatter.

    Chan, Golub and LeVeque's pairwise update: with the batch's own mean and centred
    scatter, ``mean += delta * n_b / n`` and
    ``scatter += scatter_b + delta delta^T * n_a n_b / n`` (``delta = mean_b -
    mean``, ``weight = n_b / n``, ``coef = n_a n_b / n``). Every product is of
    centred values, so a large common offset costs no precision (the naive
    ``sum x x^T - n mean mean^T`` loses it all in float32). The scatter is updated
    in place one block of locations at a time: the temporaries are one block's.
    """
    b, h, w, d = batch.shape
    locations = h * w
    x = batch.astype(jnp.float32).reshape(b, locations, d)
    mean_b = jnp.mean(x, axis=0)
    delta = mean_b - mean

    def merge_block(i, scatter):
        start = i * size
        first = jnp.minimum(start, locations - size)
        xb = jax.lax.dynamic_slice_in_dim(x, first, size, axis=1)
        centred = xb - jax.lax.dynamic_slice_in_dim(mean_b, first, size)
        db = jax.lax.dynamic_slice_in_dim(delta, first, size)
        update = jnp.einsum(
            "nli,nlj->lij", centred, centred, precision=jax.lax.Precision.HIGHEST
        ) + coef * (db[:, :, None] * db[:, None, :])
        update = jnp.where(_fresh(first, start, size)[:, None, None], update, 0.0)
        old = jax.lax.dynamic_slice_in_dim(scatter, first, size)
        return jax.lax.dynamic_update_slice_in_dim(scatter, old + update, first, 0)

    scatter = jax.lax.fori_loop(0, num_blocks, merge_block, scatter)
    largest = jnp.maximum(largest, jnp.max(jnp.abs(x)))
    return mean + weight * delta, scatter, largest


def _merge(moments: _Moments | None, batch: jax.Array) -> _Moments:
    """``moments`` (None before the first batch) updated with a checked batch."""
    b, h, w, d = batch.shape
    if moments is None:
        f32 = jnp.float32
        moments = _Moments(
            0,
            jnp.zeros((h * w, d), f32),
            jnp.zeros((h * w, d, d), f32),
            jnp.zeros((), f32),
            (h, w, d),
        )
    if b == 0:
        return moments
    count = moments.count + b
    num_blocks, size = _blocks(h * w, d)
    mean, scatter, largest = _merge_batch(
        moments.mean,
        moments.scatter,
        moments.largest,
        batch,
        b / count,
        moments.count * b / count,
        num_blocks=num_blocks,
        size=size,
    )
    return _Moments(count, mean, scatter, largest, moments.shape)


@functools.partial(jax.jit, static_argnames=("size",), donate_argnums=(0,))
def _whiten_block(scatter, start, first, count, regularization, *, size):
    """Replaces a block of scatter matrices by their whitenings, in place.

    Sigma = scatter / (N - 1) + regularization I (``np.cov`` + 0.01 I), its
    Cholesky factor L and L^-1 by a triangular solve. Returns the updated (L, d, d)
    array and two flags over the block's new locations: whether every covariance
    is finite (an overflowing one gives L = inf and a finite but all-zero L^-1,
    which would score everything 0), and whether every factor and its inverse are
    finite (a finite covariance too ill-conditioned for float32 makes the
    Cholesky meet a non-positive pivot: NaN).
    """
    block = jax.lax.dynamic_slice_in_dim(scatter, first, size)
    eye = jnp.eye(block.shape[-1], dtype=block.dtype)
    covariance = block / (count - 1) + regularization * eye
    whitening, chol = ops.cholesky_whitening(covariance)
    # Locations the previous block already whitened keep their values (whatever
    # the factorisation of those made).
    fresh = _fresh(first, start, size)[:, None, None]
    finite_cov = jnp.all(~fresh | jnp.isfinite(covariance))
    finite_factor = jnp.all(~fresh | (jnp.isfinite(chol) & jnp.isfinite(whitening)))
    whitening = jnp.where(fresh, whitening, block)
    updated = jax.lax.dynamic_update_slice_in_dim(scatter, whitening, first, 0)
    return updated, finite_cov, finite_factor


@functools.partial(jax.jit, static_argnames=("shape",), donate_argnums=(0,))
def _reshape(x, shape):
    return x.reshape(shape)  # donated: no second state-sized copy


def _check_dims(fn: str, name: str, x) -> None:
    """(N, h, w, d) with h, w, d >= 1: a Gaussian needs locations and channels."""
    if min(x.shape[1:]) < 1:
        raise ValueError(
            f"{fn}: {name} must have h, w, d >= 1 (a Gaussian per location over "
            f"d >= 1 channels); got shape {tuple(x.shape)}."
        )


def _check_count(fn: str, count: int) -> None:
    if count < 2:
        raise ValueError(
            f"{fn}: need at least 2 training images for a covariance; got {count}."
        )


def _finish(fn: str, config: PaDiMConfig, moments: _Moments | None, progress: bool):
    """The fitted state from the merged moments: whitening in place, block by block."""
    count = 0 if moments is None else moments.count
    _check_count(fn, count)
    h, w, d = moments.shape
    locations = h * w
    _, size = _blocks(locations, d)
    regularization = float(config.regularization)
    from tqdm.auto import tqdm

    scatter = moments.scatter
    finite_covs, finite_factors = [jnp.all(jnp.isfinite(moments.mean))], []
    starts = range(0, locations, size)
    for start in tqdm(starts, desc="padim: fit", unit="block", disable=not progress):
        first = min(start, locations - size)
        scatter, finite_cov, finite_factor = _whiten_block(
            scatter, start, first, float(count), regularization, size=size
        )
        finite_covs.append(finite_cov)
        finite_factors.append(finite_factor)
        jax.block_until_ready(scatter)  # progress is real; Ctrl-C stops here
    if not all(bool(f) for f in finite_covs):
        raise ValueError(
            f"{fn}: the fitted Gaussians are not finite: the covariance of embeddings "
            f"as large as {float(moments.largest):.3g} overflows float32. Are the "
            "images ImageNet-normalised?"
        )
    if not all(bool(f) for f in finite_factors):
        raise ValueError(
            f"{fn}: the Cholesky factorisation of a covariance failed in float32: "
            f"with {count} training images of embeddings as large as "
            f"{float(moments.largest):.3g}, the covariance + regularization "
            f"{regularization:g} I is too ill-conditioned for float32 (it has not "
            "overflowed). Use a larger PaDiMConfig(regularization=...) (e.g. about "
            "1% of the embeddings' variance), more training images, or normalised "
            "inputs (ImageNet-normalised images)."
        )
    return PaDiMState(
        mean=_reshape(moments.mean, (h, w, d)),
        whitening=_reshape(scatter, (h, w, d, d)),
        config=config,
    )


def fit(
    config: PaDiMConfig,
    embeddings,
    *,
    key: jax.Array | None = None,
    progress: bool = False,
) -> PaDiMState:
    """Per-location mean and regularised covariance (Cholesky-factorised).

    :func:`fit_batches` with all the embeddings as one batch. Locations are
    processed in blocks (up to 256 MB of covariances each), so the peak memory is
    the embeddings, the state and a block, not several state-sized arrays.

    Args:
      config: a :class:`PaDiMConfig`.
      embeddings: (N, h, w, d) training embeddings from :func:`embed`, N >= 2;
        finite.
      key: unused (PaDiM is deterministic); accepted for the common protocol.
      progress: show a progress bar over the blocks (Ctrl-C stops between them).

    Returns:
      :class:`PaDiMState`.

    Raises:
      TypeError: ``config`` not a :class:`PaDiMConfig`; non-float embeddings.
      ValueError: embeddings not (N, h, w, d) with h, w, d >= 1, N < 2, NaN or
        inf in them, a covariance that overflows float32, or one too
        ill-conditioned for a float32 Cholesky at this ``regularization``.
    """
    del key
    fn = "padim.fit"
    check_instance(fn, "config", config, PaDiMConfig)
    embeddings = _checks.as_float_array(fn, "embeddings", embeddings)
    _checks.check_rank(fn, "embeddings", embeddings, 4, "N, h, w, d")
    _check_dims(fn, "embeddings", embeddings)
    _checks.check_finite(fn, "embeddings", embeddings)
    _check_count(fn, embeddings.shape[0])  # before any work
    return _finish(fn, config, _merge(None, embeddings), progress)


def fit_batches(
    config: PaDiMConfig,
    batches: Iterable,
    *,
    key: jax.Array | None = None,
    progress: bool = False,
) -> PaDiMState:
    """:func:`fit` from a stream of embedding batches, in memory independent of N.

    The per-location count, mean and centred scatter matrix are accumulated on
    device in float32 with Chan, Golub and LeVeque's pairwise update (each batch's
    own mean and scatter, merged with a ``delta delta^T n_a n_b / n`` term), which
    keeps float32 accuracy where the naive sum of squares would not (embeddings
    with a large common offset). Memory: one (h, w, d, d) accumulator, updated in
    place (it becomes the state's whitening), plus the current batch; the result
    equals :func:`fit` on the concatenated batches to float32 rounding, for any
    batching.

    Args:
      config: a :class:`PaDiMConfig`.
      batches: iterable of (B, h, w, d) float embeddings from :func:`embed`, all
        with the first batch's h, w and d, finite; N >= 2 images in all (empty
        batches are skipped). Each batch size compiles the merge once.
      key: unused (PaDiM is deterministic); accepted for the common protocol.
      progress: show a progress bar over the final blocks of locations (Ctrl-C
        stops between batches and between blocks). Wrap ``batches`` in ``tqdm``
        for a bar over them.

    Returns:
      :class:`PaDiMState`.

    Raises:
      TypeError: ``config`` not a :class:`PaDiMConfig`; a non-float batch.
      ValueError: a batch not (B, h, w, d) like the first one (h, w, d >= 1) or
        holding NaN or inf (the message names its index), fewer than 2 images in
        all, a covariance that overflows float32, or one too ill-conditioned for a
        float32 Cholesky at this ``regularization``.

    Example:
      >>> import numpy as np
      >>> x = np.random.default_rng(0).standard_normal((6, 2, 2, 3), np.float32)
      >>> state = fit_batches(PaDiMConfig(), [x[:4], x[4:]])
      >>> state.whitening.shape
      (2, 2, 3, 3)

    References:
      T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise
      algorithm for computing sample variances", COMPSTAT 1982.
    """
    del key
    fn = "padim.fit_batches"
    check_instance(fn, "config", config, PaDiMConfig)
    moments = None
    for index, batch in enumerate(batches):
        name = f"batch {index}"
        batch = _checks.as_float_array(fn, name, batch)
        _checks.check_rank(fn, name, batch, 4, "B, h, w, d")
        _check_dims(fn, name, batch)
        if moments is not None and tuple(batch.shape[1:]) != moments.shape:
            raise ValueError(
                f"{fn}: {name} must be (B, {', '.join(map(str, moments.shape))}) "
                f"like the first batch; got shape {tuple(batch.shape)}."
            )
        _checks.check_finite(fn, name, batch)
        moments = _merge(moments, batch)
    return _finish(fn, config, moments, progress)


def score(state: PaDiMState, embeddings) -> jax.Array:
    """Mahalanobis distance of each location to its Gaussian (F2PAD eq. 7).

    Args:
      state: a fitted :class:`PaDiMState`.
      embeddings: (B, h, w, d) test embeddings.

    Returns:
      (B, h, w) distances (squared if ``config.squared``).

    Raises:
      TypeError: ``state`` not a :class:`PaDiMState`; non-floating embeddings.
      ValueError: embeddings not (B, h, w, d) with the state's h, w and d.
    """
    fn = "padim.score"
    check_instance(fn, "state", state, PaDiMState)
    shape = tuple(getattr(embeddings, "shape", ()))
    if len(shape) != 4 or shape[1:] != tuple(state.mean.shape):
        raise ValueError(
            f"{fn}: embeddings must be (B, {', '.join(map(str, state.mean.shape))}) "
            f"like the fitted state; got shape {shape}."
        )
    dtype = getattr(embeddings, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: embeddings must have a floating dtype; got {dtype}.")
    return ops.mahalanobis(
        state.whitening, state.mean, embeddings, squared=state.config.squared
    )


def init(
    config: PaDiMConfig, embeddings, *, num_images: int = 0, key=None
) -> PaDiMState:
    """A state of the shapes :func:`fit` gives (zeros): the template for restoring.

    Args:
      config: a :class:`PaDiMConfig`.
      embeddings: (B, h, w, d) embeddings of any batch (only their shape is read;
        a ``jax.ShapeDtypeStruct`` will do).
      num_images: unused (the state's size does not depend on it).
      key: unused; accepted for the common protocol.

    Returns:
      :class:`PaDiMState` of zeros: mean (h, w, d), whitening (h, w, d, d).
    """
    del num_images, key
    h, w, d = embeddings.shape[1:]
    return PaDiMState(
        mean=jnp.zeros((h, w, d), jnp.float32),
        whitening=jnp.zeros((h, w, d, d), jnp.float32),
        config=config,
    )


def feature_loss(state: PaDiMState, embeddings, context) -> jax.Array:
    """F2PAD eq. 7: the squared Mahalanobis distance, whatever ``config.squared``.

    Args:
      state: a fitted :class:`PaDiMState`.
      embeddings: (B, h, w, d) embeddings of the current estimate n.
      context: unused (PaDiM's loss needs nothing from the initial image:
        ``None``).

    Returns:
      (B, h, w) squared distances, differentiable w.r.t. the embeddings.
    """
    del context
    check_instance("padim.feature_loss", "state", state, PaDiMState)
    return score(
        state.replace(config=dataclasses.replace(state.config, squared=True)),
        embeddings,
    )


PRESETS = {
    # The first preset is the default config: xiahaifeng1995's reference code.
    "reference": PaDiMConfig(),
}

METHOD = register(
    Method(
        name="padim",
        config_type=PaDiMConfig,
        state_type=PaDiMState,
        embed=embed,
        fit=fit,
        score=score,
        init=init,
        fit_batches=fit_batches,
        presets=PRESETS,
        feature_loss=feature_loss,
    )
)
