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
* covariance ``np.cov`` (N - 1 normalisation) plus 0.01 I;
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

__all__ = ["PaDiMConfig", "PaDiMState", "channel_subset", "embed", "fit", "score"]

_DEFAULT_FEATURES = {448: 100, 1792: 550}


def channel_subset(total: int, n_features: int | None, seed: int = 1024) -> tuple:
    """The reference's random channel indices: ``random.seed(seed)``; ``sample``.

    Args:
      total: channels of the concatenated levels (448 for ResNet-18 levels 1-3).
      n_features: channels to keep; ``None`` for the reference's default (100 for 448,
        550 for 1792, else min(100, total)).
      seed: Python ``random`` seed (1024 in the reference).

    Returns:
      Tuple of ``n_features`` distinct ints in ``range(total)``, in sample order.
    """
    if n_features is None:
        n_features = _DEFAULT_FEATURES.get(total, min(100, total))
    if not 1 <= n_features <= total:
        raise ValueError(
            f"PaDiM: n_features must be between 1 and {total}; got {n_features}."
        )
    rng = random.Random()
    rng.seed(seed)
    return tuple(rng.sample(range(total), n_features))


_BLOCK_BYTES = 1 << 28  # covariances fitted per block (256 MB of float32)


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
      upsample, sigma, blur_mode: shared post-processing (see ``jad.methods.base``).
    """

    levels: tuple[int, ...] = (1, 2, 3)
    n_features: int | None = None
    seed: int = 1024
    regularization: float = 0.01
    squared: bool = False
    upsample: str = "bilinear"
    sigma: float = 4.0
    blur_mode: str = "symmetric"

    def __post_init__(self):
        if not self.levels:
            raise ValueError("PaDiMConfig: levels must not be empty.")
        check_config_fields(
            "PaDiMConfig", self, ints=("seed",), floats=("regularization",),
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
    first = features[config.levels[0]]
    grid = first.shape[1:3]
    parts = []
    for level in config.levels:
        f = features[level]
        if f.shape[1:3] != grid:
            f = ops.resize(f, grid, method="nearest", channels_last=True)
        parts.append(f)
    return jnp.concatenate(parts, axis=-1)


def embed(config: PaDiMConfig, features: dict) -> jax.Array:
    """Concatenated levels on the finest grid, restricted to the random channels.

    Args:
      config: a :class:`PaDiMConfig`.
      features: dict level -> (B, h_l, w_l, C_l) containing ``config.levels``.

    Returns:
      (B, h, w, d) embeddings (d = the subset size, or all channels when
      ``n_features == 0``).

    Raises:
      ValueError: a level of ``config.levels`` is missing from ``features``.
    """
    check_levels("padim.embed", config, features)
    concat = _concat(config, features)
    total = concat.shape[-1]
    if config.n_features == 0:
        return concat
    idx = np.asarray(channel_subset(total, config.n_features, config.seed))
    return concat[..., idx]


def fit(
    config: PaDiMConfig,
    embeddings,
    *,
    key: jax.Array | None = None,
    progress: bool = False,
) -> PaDiMState:
    """Per-location mean and regularised covariance (Cholesky-factorised).

    Locations are fitted in blocks (up to 256 MB of covariances each), so the peak
    memory is the state plus a few blocks, not several state-sized arrays.

    Args:
      config: a :class:`PaDiMConfig`.
      embeddings: (N, h, w, d) training embeddings from :func:`embed`, N >= 2;
        finite.
      key: unused (PaDiM is deterministic); accepted for the common protocol.
      progress: show a progress bar over the blocks (Ctrl-C stops between them).

    Returns:
      :class:`PaDiMState`.
    """
    del key
    fn = "padim.fit"
    check_instance(fn, "config", config, PaDiMConfig)
    embeddings = _checks.as_float_array(fn, "embeddings", embeddings)
    _checks.check_rank(fn, "embeddings", embeddings, 4, "N, h, w, d")
    _checks.check_finite(fn, "embeddings", embeddings)
    n, h, w, d = embeddings.shape
    if n < 2:
        raise ValueError(
            f"{fn}: need at least 2 training images for a covariance; got {n}."
        )
    x = embeddings.astype(jnp.float32).reshape(n, h * w, d)
    locations = h * w
    # Equal blocks of at most _BLOCK_BYTES of covariances each.
    num_blocks = -(-locations // max(1, _BLOCK_BYTES // (4 * d * d)))
    block = -(-locations // num_blocks)
    regularization = float(config.regularization)
    from tqdm.auto import tqdm

    means, whitenings, finites = [], [], []
    starts = range(0, locations, block)
    for start in tqdm(starts, desc="padim: fit", unit="block", disable=not progress):
        # One compiled block size: the last block ends at the last location and
        # overlaps its predecessor; only its new locations are kept.
        first = min(start, locations - block)
        mean, whitening, finite = _fit_block(x, first, block, regularization)
        finites.append(finite)
        means.append(mean[start - first :])
        whitenings.append(jax.block_until_ready(whitening[start - first :]))
    mean = means[0] if len(means) == 1 else jnp.concatenate(means)
    whitening = whitenings[0] if len(whitenings) == 1 else jnp.concatenate(whitenings)
    if not all(bool(f) for f in finites):
        largest = float(jnp.max(jnp.abs(x)))
        raise ValueError(
            f"{fn}: the fitted Gaussians are not finite: the covariance of embeddings "
            f"as large as {largest:.3g} overflows float32. Are the images "
            "ImageNet-normalised?"
        )
    return PaDiMState(
        mean=mean.reshape(h, w, d), whitening=whitening.reshape(h, w, d, d),
        config=config,
    )


@functools.partial(jax.jit, static_argnames=("size",))
def _fit_block(x, first, size, regularization):
    """Mean and whitening of locations ``first:first+size`` of (N, L, d) ``x``.

    Returns (size, d) means, (size, d, d) inverse Cholesky factors L^-1 of the
    regularised covariances, and whether all of them are finite (an overflowing
    covariance gives L = inf and a finite but all-zero L^-1, which would score
    everything 0).
    """
    x = jax.lax.dynamic_slice_in_dim(x, first, size, axis=1)
    n, d = x.shape[0], x.shape[-1]
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    cov = jnp.einsum(
        "nli,nlj->lij", centred, centred, precision=jax.lax.Precision.HIGHEST
    ) / (n - 1)
    eye = jnp.eye(d, dtype=cov.dtype)
    chol = jnp.linalg.cholesky(cov + regularization * eye)
    whitening = jax.lax.linalg.triangular_solve(
        chol, jnp.broadcast_to(eye, cov.shape), left_side=True, lower=True
    )
    finite = (jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(chol))
              & jnp.all(jnp.isfinite(whitening)))
    return mean, whitening, finite


def score(state: PaDiMState, embeddings) -> jax.Array:
    """Mahalanobis distance of each location to its Gaussian (eq. 7).

    Args:
      state: a fitted :class:`PaDiMState`.
      embeddings: (B, h, w, d) test embeddings.

    Returns:
      (B, h, w) distances (squared if ``config.squared``).

    Raises:
      TypeError: ``state`` not a :class:`PaDiMState`.
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
    diff = embeddings - state.mean
    z = jnp.einsum("hwij,bhwj->bhwi", state.whitening, diff,
                   precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(z * z, axis=-1)
    if state.config.squared:
        return sq
    # Double where: sqrt's gradient is infinite at 0 (an embedding equal to the mean),
    # which would make the gradient NaN; there the distance is sq = 0 with gradient
    # 0. NaN (from NaN embeddings) fails `sq > 0` and passes through as NaN: it is
    # never turned into the distance 0 of a perfectly normal location.
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq)


METHOD = register(
    Method(
        name="padim",
        config_type=PaDiMConfig,
        state_type=PaDiMState,
        embed=embed,
        fit=fit,
        score=score,
    )
)
