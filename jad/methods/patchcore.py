"""PatchCore (Roth et al., CVPR 2022; F2PAD section III-B.1).

Training patches of a pretrained backbone, locally aggregated, form a memory bank that
a greedy coreset reduces to a fraction; a test patch's anomaly score is its distance to
the nearest bank entry (F2PAD eq. 4); the image score is the maximum patch score.

Two presets reproduce the two public implementations on identical features
(amazon-science/patchcore-inspection and anomalib's PatchCore model):

===================== ================================ ================================
                      ``"official"`` (default)         ``"anomalib"``
===================== ================================ ================================
aggregation           3x3 unfold (zero padding), each  3x3 average pool (zero padding,
                      level adaptive-avg-pooled to     count_include_pad), deeper level
                      1024, deeper level bilinearly    bilinearly upsampled, levels
                      upsampled, levels pooled to 1024 concatenated (e.g. 1536-d)
coreset projection    dense, 128-d (torch Linear init) sparse JL (eps 0.9)
coreset start         mean distance to 10 random pts   one random point (selected)
patch score           squared L2, mean over k = 1      L2, nearest
image score           max patch score                  max patch score re-weighted by
                                                       1 - softmax over its 9 NN
                                                       (PatchCore eq. 7)
map                   bilinear, blur sigma 4 (scipy    nearest, blur sigma 4 (torch
                      'reflect' = symmetric)           'reflect')
===================== ================================ ================================

The adaptive average pooling of a flattened (C, 3, 3) patch
(:func:`jad.ops.adaptive_avg_pool`) reproduces torch's ``adaptive_avg_pool1d`` bins
exactly (start ``floor(i L / n)``, end ``ceil((i + 1) L / n)``) by summing each bin's
few entries (a gather), so it costs O(L + n) per location and never forms the (L x n)
pooling matrix; the unfold, the average pool and the alignment of the levels are
:func:`jad.ops.unfold`, :func:`jad.ops.avg_pool` and :func:`jad.ops.align_levels`.
Pooling and bilinear upsampling are both linear and commute, so pooling first
(cheaper) equals the official order.

F2PAD's restricted score (F2PAD eq. 5) is :func:`restricted_score` over the candidate
sets of
:func:`candidate_indices` (the ``num_candidates`` nearest bank entries of each location
of an initial image; 50 in F2PAD).
"""

from __future__ import annotations

import dataclasses
import sys

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad.methods.base import (
    Method,
    check_config_fields,
    check_instance,
    check_levels,
    check_postprocess,
    register,
)
from jad.methods.coreset import greedy_coreset
from jad.ops import (
    adaptive_avg_pool,
    align_levels,
    avg_pool,
    dense_random_projection,
    johnson_lindenstrauss_dim,
    nearest_neighbors,
    sparse_random_projection,
    unfold,
)

__all__ = [
    "PatchCoreConfig",
    "PatchCoreState",
    "candidate_indices",
    "embed",
    "PRESETS",
    "feature_loss",
    "fit",
    "image_score",
    "init",
    "loss_context",
    "restricted_score",
    "score",
]

_PRESETS = ("official", "anomalib")


@dataclasses.dataclass(frozen=True)
class PatchCoreConfig:
    """PatchCore settings (defaults: the official baseline, ``preset="official"``).

    Attributes:
      preset: ``"official"`` or ``"anomalib"`` (see the module docstring); use
        :meth:`anomalib` to get that preset's other defaults.
      levels: backbone levels (2 and 3: ResNet ``layer2``/``layer3``).
      patch_size: neighbourhood of the local aggregation (3).
      pretrain_dim: official: per-level pooled dimension (1024).
      target_dim: official: final dimension (1024).
      coreset_ratio: fraction of training patches kept (0.1; 1.0 keeps all).
      projection_dim: official: coreset projection dimension (128); anomalib: ``None``
        (Johnson-Lindenstrauss dimension for eps 0.9).
      num_starting_points: official coreset start (10).
      num_neighbors: official: k of the mean k-NN patch score (1); anomalib: the
        neighbours of the re-weighting (9).
      upsample, sigma, blur_mode, combine, align_corners: shared
        post-processing (see :func:`jad.methods.base.postprocess`).
      bank_chunk: bank rows per k-NN step (memory knob).
      num_candidates: F2PAD's |M_ij|, the bank entries nearest to each location
        of the initial image among which its feature loss searches (F2PAD
        sec. IV-A.3: 50); see :func:`loss_context`.
    """

    preset: str = "official"
    levels: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    pretrain_dim: int = 1024
    target_dim: int = 1024
    coreset_ratio: float = 0.1
    projection_dim: int | None = 128
    num_starting_points: int = 10
    num_neighbors: int = 1
    upsample: str = "bilinear"
    sigma: float = 4.0
    blur_mode: str = "symmetric"
    combine: str = "mean"
    align_corners: bool = False
    bank_chunk: int = 4096
    num_candidates: int = 50

    def __post_init__(self):
        fn = "PatchCoreConfig"
        _checks.check_choice(fn, "preset", self.preset, _PRESETS)
        check_config_fields(fn, self, floats=("coreset_ratio",))
        if not 0.0 < float(self.coreset_ratio) <= 1.0:
            raise ValueError(
                f"{fn}: coreset_ratio must be in (0, 1]; got {self.coreset_ratio}."
            )
        for name in (
            "patch_size",
            "pretrain_dim",
            "target_dim",
            "num_neighbors",
            "num_starting_points",
            "bank_chunk",
            "num_candidates",
        ):
            _checks.check_int(fn, name, getattr(self, name), low=1)
        if self.patch_size % 2 == 0:
            raise ValueError(
                f"{fn}: patch_size must be odd (a centred neighbourhood); got "
                f"{self.patch_size}."
            )
        if self.projection_dim is not None:
            _checks.check_int(fn, "projection_dim", self.projection_dim, low=1)
        check_postprocess(fn, self)
        object.__setattr__(self, "levels", tuple(int(x) for x in self.levels))

    @classmethod
    def anomalib(cls, **overrides) -> PatchCoreConfig:
        """The anomalib preset (``PRESETS["anomalib"]``) with some fields changed.

        Args:
          **overrides: fields to change.

        Returns:
          The config.
        """
        return dataclasses.replace(PRESETS["anomalib"], **overrides)


PRESETS = {
    # The first preset is the default config.
    "official": PatchCoreConfig(),
    "anomalib": PatchCoreConfig(
        preset="anomalib",
        projection_dim=None,
        num_neighbors=9,
        upsample="nearest",
        blur_mode="reflect",
    ),
}


@flax.struct.dataclass
class PatchCoreState:
    """A fitted PatchCore: the (coreset-reduced) memory bank.

    Attributes:
      memory_bank: (M, D) float32 bank of training patch embeddings.
      config: the :class:`PatchCoreConfig` (static).
    """

    memory_bank: jax.Array
    config: PatchCoreConfig = flax.struct.field(pytree_node=False)


def embed(config: PatchCoreConfig, features: dict) -> jax.Array:
    """Locally aware patch embeddings (the preset's aggregation).

    Args:
      config: a :class:`PatchCoreConfig`.
      features: dict level -> (B, h_l, w_l, C_l) backbone features containing
        ``config.levels``.

    Returns:
      (B, h, w, D) embeddings on the grid of the first level in ``config.levels``
      (D = ``target_dim`` for ``"official"``, the sum of channels for ``"anomalib"``).

    Raises:
      TypeError: a level of non-floating features.
      ValueError: a level of ``config.levels`` missing from ``features``, not
        (B, h, w, C) with h, w, C >= 1, or levels of different batch sizes B (B = 0
        gives empty embeddings).
    """
    check_levels("patchcore.embed", config, features)
    per_level = []
    for level in config.levels:
        f = features[level]
        if config.preset == "official":
            f = adaptive_avg_pool(unfold(f, config.patch_size), config.pretrain_dim)
        else:
            f = avg_pool(f, config.patch_size)
        per_level.append(f)
    per_level = align_levels(per_level, method="bilinear")
    if config.preset == "official":
        stacked = jnp.concatenate(per_level, axis=-1)  # == flatten of (levels, dim)
        return adaptive_avg_pool(stacked, config.target_dim)
    return jnp.concatenate(per_level, axis=-1)


def fit(
    config: PatchCoreConfig, embeddings, *, key: jax.Array, progress: bool = False
) -> PatchCoreState:
    """Builds the memory bank: all training patches, reduced by the greedy coreset.

    Args:
      config: a :class:`PatchCoreConfig`.
      embeddings: (N, h, w, D) training embeddings from :func:`embed`; finite.
      key: PRNG key (projection and coreset start).
      progress: print the coreset's size, the embeddings' memory and (after its
        first second) a time estimate with quicker settings when it is long, and
        show its progress bar (Ctrl-C stops it within about a second).

    Returns:
      :class:`PatchCoreState` with ``int(N h w * coreset_ratio)`` bank entries
      (at least 1; all of them when the ratio is 1).
    """
    fn = "patchcore.fit"
    check_instance(fn, "config", config, PatchCoreConfig)
    _checks.check_key(fn, "key", key)
    # Host (numpy) embeddings stay on the host: only their projection and the
    # selected bank go to the device, so a large training set is not held twice.
    if not isinstance(embeddings, (np.ndarray, jax.Array)):
        embeddings = _checks.as_float_array(fn, "embeddings", embeddings)
    elif not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: embeddings must have a floating dtype; got {embeddings.dtype}."
        )
    _checks.check_rank(fn, "embeddings", embeddings, 4, "N, h, w, D")
    _checks.check_finite(fn, "embeddings", embeddings)
    if embeddings.shape[-1] == 0:
        raise ValueError(f"{fn}: embeddings have 0 channels (D = 0).")
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    n, dim = flat.shape
    if n == 0:
        raise ValueError("patchcore.fit: embeddings are empty (no training images).")
    # Squared distances reach 4 max ||x||^2: they must not overflow to inf, which
    # would make every patch equally far from the bank.
    largest = float(jnp.max(_map_rows(_largest_squared_norm, flat)))
    if not largest * 4 < float(jnp.finfo(jnp.float32).max):
        raise ValueError(
            f"{fn}: squared distances between embeddings overflow float32 (squared "
            f"norms up to {largest:.3g}). Are the images ImageNet-normalised?"
        )
    if config.coreset_ratio >= 1.0:
        return PatchCoreState(memory_bank=jnp.asarray(flat), config=config)
    n_select = max(1, int(n * config.coreset_ratio))
    key_proj, key_start = jax.random.split(key)
    if config.preset == "official":
        out_dim = 128 if config.projection_dim is None else config.projection_dim
        proj = dense_random_projection(key_proj, dim, out_dim)
    else:
        out_dim = config.projection_dim
        if out_dim is None:
            out_dim = johnson_lindenstrauss_dim(n, eps=0.9)
        proj = sparse_random_projection(key_proj, dim, out_dim)
    projected = _map_rows(lambda rows: rows @ proj, flat)
    if progress:
        print(
            f"patchcore: coreset of {n_select:,} out of {n:,} patches (coreset_ratio "
            f"{config.coreset_ratio:g}); the {dim}-d training embeddings take "
            f"{n * dim * 4 / 2**30:.2f} GiB, selection runs on a {out_dim}-d "
            "projection.",
            file=sys.stderr,
            flush=True,
        )
    indices = greedy_coreset(
        projected,
        n_select,
        report=_report_estimate(config) if progress else None,
        key=key_start,
        variant=config.preset,
        num_starting_points=config.num_starting_points,
        progress=progress,
    )
    if isinstance(flat, np.ndarray):
        return PatchCoreState(
            memory_bank=jnp.asarray(flat[np.asarray(indices)]), config=config
        )
    return PatchCoreState(memory_bank=flat[indices], config=config)


@jax.jit
def _largest_squared_norm(flat):
    return jnp.max(jnp.einsum("nd,nd->n", flat, flat))[None]


_ROW_CHUNK = 1 << 16


def _map_rows(fn, flat):
    """``fn`` over (N, D) rows in chunks, results concatenated along axis 0.

    Host rows go to the device a chunk at a time (never all at once); device rows
    are used in place.
    """
    if not isinstance(flat, np.ndarray):
        return fn(flat)
    parts = [
        fn(jnp.asarray(flat[i : i + _ROW_CHUNK]))
        for i in range(0, flat.shape[0], _ROW_CHUNK)
    ]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


_LONG_FIT_SECONDS = 300.0
_SHORT_SECONDS = 10.0


def _report_estimate(config: PatchCoreConfig):
    """The coreset's time estimate, with a way out when it is long."""

    def report(estimate) -> None:
        if estimate.seconds < _SHORT_SECONDS:  # nothing to plan for
            return
        line = (
            f"patchcore: the coreset will take about "
            f"{_duration(estimate.seconds)} on this device "
            f"({estimate.seconds_per_pick * 1e3:.2f} ms per selected patch)."
        )
        if estimate.seconds > _LONG_FIT_SECONDS:
            ratio = config.coreset_ratio / 10
            # The time goes with patches x picks: linear in the ratio, quadratic
            # in the number of training images.
            line += (
                f" For a quicker fit lower coreset_ratio (jad fit --set "
                f"coreset_ratio={ratio:g}: about "
                f"{_duration(estimate.seconds / 10)}) or train on fewer images "
                "(jad fit --num-train; half of them: about "
                f"{_duration(estimate.seconds / 4)}). Ctrl-C stops it."
            )
        print(line, file=sys.stderr, flush=True)

    return report


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _check_state(fn: str, state, embeddings) -> None:
    """A :class:`PatchCoreState`, and floating (..., D) embeddings of the bank's D."""
    check_instance(fn, "state", state, PatchCoreState)
    dim = state.memory_bank.shape[-1]
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) < 1 or shape[-1] != dim:
        raise ValueError(
            f"{fn}: embeddings must be (..., {dim}) like the memory bank; got "
            f"shape {None if shape is None else tuple(shape)}."
        )
    dtype = getattr(embeddings, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: embeddings must have a floating dtype; got {dtype}.")


def _knn(state: PatchCoreState, embeddings, k: int, squared: bool):
    return nearest_neighbors(
        embeddings,
        state.memory_bank,
        min(k, state.memory_bank.shape[0]),
        squared=squared,
        bank_chunk=state.config.bank_chunk,
    )


def score(state: PatchCoreState, embeddings) -> jax.Array:
    """Patch anomaly scores: distance to the nearest memory-bank entry (F2PAD eq. 4).

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (B, h, w, D) test embeddings.

    Returns:
      (B, h, w): official, the mean squared L2 distance to the ``num_neighbors``
      nearest entries; anomalib, the L2 distance to the nearest one.
    """
    _check_state("patchcore.score", state, embeddings)
    if state.config.preset == "official":
        dist, _ = _knn(state, embeddings, state.config.num_neighbors, True)
        return jnp.mean(dist, axis=-1)
    dist, _ = _knn(state, embeddings, 1, False)
    return dist[..., 0]


def image_score(
    state: PatchCoreState, embeddings, patch_map: jax.Array, *, maps=None
) -> jax.Array:
    """Image anomaly score from the patch scores (before upsampling).

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (B, h, w, D) test embeddings.
      patch_map: (B, h, w) from :func:`score`.
      maps: the final (B, H, W) maps (unused: PatchCore scores images before
        upsampling); accepted for the common protocol.

    Returns:
      (B,): official, the maximum patch score; anomalib, the maximum re-weighted by
      ``1 - softmax(d(m_test, N_b(m*)))[0]`` over the ``num_neighbors`` nearest bank
      entries of the test patch's nearest entry m* (PatchCore eq. 7); with
      ``num_neighbors == 1`` anomalib, too, returns the plain maximum. An empty
      batch (B = 0) gives an empty (0,) result, as :func:`score` gives (0, h, w).

    Raises:
      TypeError: ``state`` not a :class:`PatchCoreState`; non-floating
        ``embeddings`` or ``patch_map``.
      ValueError: ``embeddings`` not (B, h, w, D) with the bank's D and h, w >= 1,
        or ``patch_map`` not (B, h, w) like them.
    """
    del maps
    fn = "patchcore.image_score"
    _check_state(fn, state, embeddings)
    if len(embeddings.shape) != 4 or min(embeddings.shape[1:3]) < 1:
        raise ValueError(
            f"{fn}: embeddings must be (B, h, w, D) with h, w >= 1; got shape "
            f"{tuple(embeddings.shape)}."
        )
    patch_map = _checks.as_float_array(fn, "patch_map", patch_map)
    if tuple(patch_map.shape) != tuple(embeddings.shape[:3]):
        raise ValueError(
            f"{fn}: patch_map must be (B, h, w) = {tuple(embeddings.shape[:3])} like "
            f"the embeddings; got shape {tuple(patch_map.shape)}."
        )
    b, h, w, d = embeddings.shape
    flat_scores = patch_map.reshape(b, h * w)  # explicit sizes: B may be 0
    best = jnp.argmax(flat_scores, axis=1)
    top = jnp.take_along_axis(flat_scores, best[:, None], axis=1)[:, 0]
    # anomalib skips the re-weighting when num_neighbors == 1 (a softmax over one
    # entry would give weight 0 to every image).
    if state.config.preset == "official" or state.config.num_neighbors == 1:
        return top
    flat = jnp.reshape(embeddings, (b, h * w, d))
    test_patch = jnp.take_along_axis(flat, best[:, None, None], axis=1)[:, 0]
    _, nearest = _knn(state, test_patch, 1, False)
    m_star = state.memory_bank[nearest[:, 0]]
    _, support = _knn(state, m_star, state.config.num_neighbors, False)
    diff = test_patch[:, None, :] - state.memory_bank[support]
    distances = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    weights = 1.0 - jax.nn.softmax(distances, axis=1)[:, 0]
    return weights * top


def candidate_indices(
    state: PatchCoreState, embeddings, *, num_candidates: int = 50
) -> jax.Array:
    """F2PAD's candidate sets M_ij: the nearest bank entries of an initial image.

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (..., D) embeddings of the initial estimate n^(0).
      num_candidates: |M_ij| (50 in F2PAD), capped at the bank size.

    Returns:
      (..., num_candidates) int32 bank indices.
    """
    fn = "patchcore.candidate_indices"
    _check_state(fn, state, embeddings)
    num_candidates = _checks.check_int(fn, "num_candidates", num_candidates, low=1)
    k = min(num_candidates, state.memory_bank.shape[0])
    _, idx = _knn(state, jax.lax.stop_gradient(embeddings), k, True)
    return idx


def restricted_score(state: PatchCoreState, embeddings, candidates) -> jax.Array:
    """F2PAD eq. 5: squared distance to the nearest entry of each location's candidates.

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (..., D) embeddings.
      candidates: (..., K) int bank indices from :func:`candidate_indices`.

    Returns:
      (...,) ``min_{m in M_ij} ||f_ij - m||^2``, differentiable w.r.t. the embeddings.

    Raises:
      TypeError: ``state`` not a :class:`PatchCoreState`, non-integer ``candidates``.
      ValueError: embeddings of another dimension than the bank, ``candidates`` not
        (..., K) over (broadcastable to) the embeddings' locations, or (when
        concrete) out of range.
    """
    fn = "patchcore.restricted_score"
    _check_state(fn, state, embeddings)
    candidates = jnp.asarray(candidates)
    if not jnp.issubdtype(candidates.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: candidates must be integer bank indices; got {candidates.dtype}."
        )
    try:
        if candidates.ndim < 1:
            raise ValueError
        jnp.broadcast_shapes(candidates.shape[:-1], embeddings.shape[:-1])
    except ValueError:
        raise ValueError(
            f"{fn}: candidates must be (..., K) over the locations of the embeddings "
            f"{tuple(embeddings.shape[:-1])}; got {tuple(candidates.shape)}."
        ) from None
    size = state.memory_bank.shape[0]
    # JAX's gather would clamp an out-of-range index silently.
    if (
        _checks.is_concrete(candidates)
        and candidates.size
        and not (int(candidates.min()) >= 0 and int(candidates.max()) < size)
    ):
        raise ValueError(f"{fn}: candidates must be bank indices in [0, {size}).")
    diff = embeddings[..., None, :] - state.memory_bank[candidates]
    return jnp.min(jnp.sum(diff * diff, axis=-1), axis=-1)


def init(
    config: PatchCoreConfig, embeddings, *, num_images: int, key=None
) -> PatchCoreState:
    """A state of the shapes :func:`fit` gives (zeros): the template for restoring.

    Args:
      config: a :class:`PatchCoreConfig`.
      embeddings: (B, h, w, D) embeddings of any batch (only their shape is read;
        a ``jax.ShapeDtypeStruct`` will do).
      num_images: N, the number of training images.
      key: unused; accepted for the common protocol.

    Returns:
      :class:`PatchCoreState` with a zero (M, D) bank, M = ``int(N h w
      coreset_ratio)`` (at least 1; N h w with a ratio of 1).
    """
    del key
    _, h, w, dim = embeddings.shape
    n = num_images * h * w
    size = n if config.coreset_ratio >= 1.0 else max(1, int(n * config.coreset_ratio))
    return PatchCoreState(
        memory_bank=jnp.zeros((size, dim), jnp.float32), config=config
    )


def loss_context(state: PatchCoreState, embeddings) -> jax.Array:
    """F2PAD's candidate sets of an initial image: :func:`candidate_indices`.

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (B, h, w, D) embeddings of the initial estimate n^(0).

    Returns:
      (B, h, w, K) int32 bank indices, K = ``config.num_candidates`` (capped at
      the bank size).
    """
    check_instance("patchcore.loss_context", "state", state, PatchCoreState)
    return candidate_indices(
        state, embeddings, num_candidates=state.config.num_candidates
    )


def feature_loss(state: PatchCoreState, embeddings, context) -> jax.Array:
    """F2PAD eq. 5: :func:`restricted_score` over the initial image's candidates.

    Args:
      state: a fitted :class:`PatchCoreState`.
      embeddings: (B, h, w, D) embeddings of the current estimate n.
      context: (B, h, w, K) candidate indices from :func:`loss_context`.

    Returns:
      (B, h, w) squared distance of each location to its nearest candidate,
      differentiable w.r.t. the embeddings.
    """
    return restricted_score(state, embeddings, context)


METHOD = register(
    Method(
        name="patchcore",
        config_type=PatchCoreConfig,
        state_type=PatchCoreState,
        embed=embed,
        fit=fit,
        score=score,
        init=init,
        image_score=image_score,
        presets=PRESETS,
        loss_context=loss_context,
        feature_loss=feature_loss,
    )
)
