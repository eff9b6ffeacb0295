"""SGFR: subspace-guided feature reconstruction (Kim et al., SGFR paper, sec. III).

A memory bank per backbone level l holds one column per nominal image, its whole
flattened feature map x_{n,l} (h_l w_l c_l) (SGFR eq. 1). A test image's map y_l is
reconstructed as X_l c_l by OMP with sparsity s and tolerance epsilon (SGFR eq. 2-5,
Algorithm 1, signed selection ``argmax x_jᵀ e``: :func:`jad.sparse.omp_gram` with
``selection="signed"``); the anomalous term e_l = y_l - X_l c_l, reshaped to
(h_l, w_l, c_l), gives the level's map as the per-location L2 norm over channels.

Subspace-based sampling (SGFR eq. 6-7, Algorithm 2): per test image, OMP at the
reference level with sparsity s_ref over the whole bank selects M_S, and the scoring
levels are reconstructed from the s_ref entries of M_S only: their sub-Gram (s_ref,
s_ref) and correlations (s_ref,) are gathered, so the scoring OMP never touches the
other N - s_ref entries (SGFR sec. III-B, complexity analysis).

F2PAD can refine SGFR: :func:`loss_context` fixes M_S from the initial image and
:func:`feature_loss` reconstructs from it (no paper has F2PAD on SGFR).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import NamedTuple

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
from jad.ops import nearest_neighbors
from jad.sparse import omp_gram

__all__ = [
    "PRESETS",
    "RepresentationError",
    "SGFRConfig",
    "SGFRState",
    "embed",
    "feature_loss",
    "fit",
    "init",
    "loss_context",
    "representation_error",
    "score",
]

_SAMPLING = ("subspace", "none", "random")
_NORMS = ("l2", "squared", "mean_abs")
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class SGFRConfig:
    """SGFR settings (defaults: the paper's MVTec AD setting, SGFR sec. IV-A/B).

    Attributes:
      score_levels: levels whose maps are scored (SGFR sec. IV-B: 2 and 3).
      ref_level: the level that samples M_S (SGFR eq. 6-7: level 4).
      levels: the backbone levels extracted: derived, the sorted union of
        ``score_levels`` and ``ref_level`` (given, it must equal that).
      s_ref: sparsity of the sampling OMP, |M_S| (40).
      s: sparsity of the reconstruction OMP (17), <= ``s_ref``.
      epsilon: the residual-norm tolerance of Algorithm 1 (1e-6).
      sampling: ``"subspace"`` (SGFR eq. 6-7), ``"none"`` (every bank entry, the
        ablation of SGFR sec. IV-C.1) or ``"random"`` (s_ref entries drawn at fit
        time from ``sampling_seed``, the other ablation).
      sampling_seed: seed of the random sampling.
      norm: the map from e_l per location: ``"l2"`` (the L2 norm over channels, as
        SPADE's distances; the paper does not say), ``"squared"`` or ``"mean_abs"``.
      upsample, sigma, blur_mode, combine, align_corners: shared post-processing
        (SGFR sec. III-C: bilinear, sigma 4; the mean of the per-level maps, as
        SPADE, which the paper follows).
    """

    score_levels: tuple[int, ...] = (2, 3)
    ref_level: int = 4
    levels: tuple[int, ...] = ()
    s_ref: int = 40
    s: int = 17
    epsilon: float = 1e-6
    sampling: str = "subspace"
    sampling_seed: int = 0
    norm: str = "l2"
    upsample: str = "bilinear"
    sigma: float = 4.0
    blur_mode: str = "symmetric"
    combine: str = "mean"
    align_corners: bool = False

    def __post_init__(self):
        fn = "SGFRConfig"
        if not isinstance(self.score_levels, (tuple, list)) or not all(
                isinstance(lv, numbers.Integral) and not isinstance(lv, bool)
                for lv in self.score_levels):
            raise TypeError(f"{fn}: score_levels must be a tuple of ints; got "
                            f"{self.score_levels!r}.")
        if len(set(self.score_levels)) != len(self.score_levels):
            raise ValueError(f"{fn}: score_levels must not repeat a level; got "
                             f"{tuple(self.score_levels)}.")
        score_levels = tuple(int(lv) for lv in self.score_levels)
        derived = tuple(sorted({*score_levels, self.ref_level}))
        if self.levels and tuple(self.levels) != derived:
            raise ValueError(
                f"{fn}: levels are derived from score_levels and ref_level "
                f"({derived}); got {tuple(self.levels)}."
            )
        object.__setattr__(self, "score_levels", score_levels)
        object.__setattr__(self, "levels", derived)
        check_config_fields(fn, self, ints=("ref_level", "s_ref", "s",
                                            "sampling_seed"), floats=("epsilon",))
        if not score_levels:
            raise ValueError(f"{fn}: score_levels must not be empty.")
        _checks.check_int(fn, "s_ref", self.s_ref, low=1)
        _checks.check_int(fn, "s", self.s, low=1, high=self.s_ref)
        if not 0 <= float(self.epsilon) < float("inf"):
            raise ValueError(f"{fn}: epsilon must be finite and >= 0; got "
                             f"{self.epsilon}.")
        _checks.check_choice(fn, "sampling", self.sampling, _SAMPLING)
        _checks.check_choice(fn, "norm", self.norm, _NORMS)
        check_postprocess(fn, self)


PRESETS = {
    # SGFR sec. IV-B; the first preset is the default config.
    "mvtec": SGFRConfig(),
    "btad": SGFRConfig(s_ref=36, s=11),
    # MTD: "levels 2, 3, 4 scored, the last level samples": level 4 does both.
    "mtd": SGFRConfig(score_levels=(2, 3, 4), ref_level=4, s_ref=10, s=7),
}


@flax.struct.dataclass
class SGFRState:
    """A fitted SGFR: the per-level memory banks and their Gram matrices.

    Attributes:
      banks: dict level -> (N, h_l, w_l, c_l) float32 nominal feature maps X_l.
      grams: dict level -> (N, N) float32 X_lᵀ X_l (computed once, at HIGHEST
        precision).
      subset: (s_ref,) int32 bank entries of the random sampling ablation (unused
        otherwise).
      config: the :class:`SGFRConfig` (static).
    """

    banks: dict
    grams: dict
    subset: jax.Array
    config: SGFRConfig = flax.struct.field(pytree_node=False)


def embed(config: SGFRConfig, features: dict) -> dict:
    """The levels SGFR reads, unchanged: dict level -> (B, h_l, w_l, c_l).

    Args:
      config: an :class:`SGFRConfig`.
      features: dict level -> (B, h, w, C) backbone features with ``config.levels``.

    Returns:
      dict level -> (B, h_l, w_l, c_l) for ``config.levels``.
    """
    check_levels("sgfr.embed", config, features)
    return {level: features[level] for level in config.levels}


def _check_embeddings(fn: str, state: SGFRState, embeddings, levels) -> dict:
    """Test embeddings of ``levels`` as float32, shaped like the banks; finite.

    Concrete NaN or inf is refused; traced values (under jit or grad) are not
    checked here, and :func:`_poison` turns the maps of such images into NaN.
    """
    if not isinstance(embeddings, dict):
        raise TypeError(f"{fn}: embeddings must be a dict of levels; got "
                        f"{type(embeddings).__name__}.")
    out, batch = {}, None
    for level in sorted(set(levels)):
        if level not in embeddings:
            raise ValueError(f"{fn}: embeddings lack level {level} (the state has "
                             f"levels {sorted(state.banks)}).")
        x = _checks.as_float_array(fn, f"embeddings[{level}]", embeddings[level])
        want = tuple(state.banks[level].shape[1:])
        if x.ndim != 4 or tuple(x.shape[1:]) != want or (
                batch is not None and x.shape[0] != batch):
            raise ValueError(
                f"{fn}: embeddings[{level}] must be (B, {', '.join(map(str, want))}) "
                f"like the bank, with one B for every level; got {tuple(x.shape)}.")
        batch = x.shape[0]
        _checks.check_finite(fn, f"embeddings[{level}]", x)
        out[level] = x.astype(jnp.float32)
    return out


def _poison(maps: dict, embeddings: dict) -> dict:
    """NaN maps for the images whose embeddings (any level used) are not finite."""
    finite = functools.reduce(
        jnp.logical_and,
        [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
         for x in embeddings.values()])
    bad = jnp.where(finite, 0.0, jnp.nan)[:, None, None]
    return {level: m + bad for level, m in maps.items()}


def _gram(bank):
    flat = bank.reshape(bank.shape[0], -1)
    return jnp.einsum("nm,km->nk", flat, flat, precision=_HIGHEST)


def init(config: SGFRConfig, embeddings, *, num_images: int, key=None) -> SGFRState:
    """A state of the shapes :func:`fit` gives (zeros): the template for restoring.

    Args:
      config: an :class:`SGFRConfig`.
      embeddings: dict level -> (B, h, w, c) (only the shapes are read).
      num_images: N, the number of nominal images.
      key: unused.

    Returns:
      :class:`SGFRState` of zeros.
    """
    del key
    banks = {lv: jnp.zeros((num_images, *x.shape[1:]), jnp.float32)
             for lv, x in embeddings.items()}
    grams = {lv: jnp.zeros((num_images, num_images), jnp.float32) for lv in banks}
    return SGFRState(banks=banks, grams=grams,
                     subset=jnp.zeros((config.s_ref,), jnp.int32), config=config)


def fit(config: SGFRConfig, embeddings, *, key=None, progress: bool = False
        ) -> SGFRState:
    """The memory banks (SGFR eq. 1) and their Gram matrices.

    Args:
      config: an :class:`SGFRConfig`.
      embeddings: dict level -> (N, h_l, w_l, c_l) nominal feature maps; finite.
      key: unused (the random ablation draws from ``config.sampling_seed``).
      progress: unused (the fit is a few matrix products).

    Returns:
      :class:`SGFRState`.

    Raises:
      ValueError: fewer nominal images than ``s_ref`` (the message states the
        minimum), a level missing, NaN or inf.
    """
    del key, progress
    fn = "sgfr.fit"
    check_instance(fn, "config", config, SGFRConfig)
    if not isinstance(embeddings, dict) or set(embeddings) != set(config.levels):
        raise ValueError(
            f"{fn}: embeddings must be a dict of levels {config.levels}; got "
            f"{sorted(embeddings) if isinstance(embeddings, dict) else embeddings!r}."
        )
    banks = {}
    for level, x in embeddings.items():
        x = _checks.as_float_array(fn, f"embeddings[{level}]", x)
        _checks.check_rank(fn, f"embeddings[{level}]", x, 4, "N, h, w, c")
        _checks.check_finite(fn, f"embeddings[{level}]", x)
        banks[level] = jnp.asarray(x, jnp.float32)
    sizes = {level: bank.shape[0] for level, bank in banks.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{fn}: every level needs the same number of images; got "
                         f"{sizes}.")
    n = next(iter(sizes.values()))
    if n < config.s_ref:
        raise ValueError(
            f"{fn}: SGFR samples s_ref = {config.s_ref} bank entries, so it needs at "
            f"least {config.s_ref} nominal images; got {n}. Use more images or a "
            "smaller s_ref (jad fit --set s_ref=...)."
        )
    grams = {level: _gram(bank) for level, bank in banks.items()}
    rng = np.random.default_rng(config.sampling_seed)
    subset = jnp.asarray(np.sort(rng.choice(n, config.s_ref, replace=False)),
                         jnp.int32)
    return SGFRState(banks=banks, grams=grams, subset=subset, config=config)


def _residual_map(e, norm):
    if norm == "l2":
        sq = jnp.sum(e * e, axis=-1)
        positive = sq > 0  # the root's gradient is infinite at 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq)
    if norm == "squared":
        return jnp.sum(e * e, axis=-1)
    return jnp.mean(jnp.abs(e), axis=-1)


def _sample_one(state: SGFRState, xy, norm_squared):
    """M_S of one image from X_refᵀy (SGFR eq. 6-7): (s_ref,) indices, -1 padded."""
    config = state.config
    result = omp_gram(state.grams[config.ref_level], xy, config.s_ref,
                      norms_squared=norm_squared, tol=config.epsilon,
                      selection="signed")
    return result.support


def _reconstruct_one(state: SGFRState, level: int, y, support, norm=None):
    """e_l of one image from the bank entries ``support`` (-1: none), as a map."""
    config = state.config
    bank = state.banks[level]
    if support is None:  # every entry (sampling "none"): no copy of the bank
        sub = bank.reshape(bank.shape[0], -1)
        gram = state.grams[level]
        valid = None
    else:
        valid = support >= 0
        index = jnp.where(valid, support, 0)
        sub = bank[index].reshape(index.shape[0], -1)  # (s_ref, m) gathered entries
        gram = state.grams[level][index][:, index]
    y_flat = y.reshape(-1)
    xy = jnp.einsum("km,m->k", sub, y_flat, precision=_HIGHEST)
    result = omp_gram(gram, xy, config.s, norms_squared=jnp.sum(y_flat * y_flat),
                      tol=config.epsilon, atom_mask=valid, selection="signed")
    recon = jnp.einsum("k,km->m", result.coef, sub, precision=_HIGHEST)
    e = (y_flat - recon).reshape(y.shape)  # SGFR eq. 5
    return _residual_map(e, norm or config.norm)


def _per_image(fn, *xs):
    """``fn`` over the images of a batch: vmap, or one after another on CPU.

    Each image gathers its own s_ref bank entries; for a whole batch at once those
    copies fall out of the CPU's caches, and ``lax.map`` measured 2.5-5x faster per
    image there (32 MTD images, N = 200, s_ref 10 and 40). Accelerators get the
    vmapped batch (not measured on GPU yet). Decided when tracing, from
    ``jax.default_backend()``.
    """
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda args: fn(*args), xs)
    return jax.vmap(fn)(*xs)


def _supports(state: SGFRState, embeddings):
    config = state.config
    embeddings = jax.lax.stop_gradient(embeddings)  # M_S is a selection: no gradient
    batch = embeddings[config.ref_level].shape[0]
    if config.sampling == "subspace":
        # X_refᵀ y for the whole batch: one matrix product (the bank is read once)
        bank = state.banks[config.ref_level]
        y = embeddings[config.ref_level].reshape(batch, -1)
        xy = jnp.einsum("nm,bm->bn", bank.reshape(bank.shape[0], -1), y,
                        precision=_HIGHEST)
        return _per_image(functools.partial(_sample_one, state), xy,
                          jnp.sum(y * y, axis=1))
    n = state.banks[config.ref_level].shape[0]
    every = state.subset if config.sampling == "random" else jnp.arange(n)
    return jnp.broadcast_to(every.astype(jnp.int32), (batch, every.shape[0]))


def _maps(state: SGFRState, embeddings, supports) -> dict:
    """Per-level maps from (B, k) supports, or from every entry when None."""
    if supports is None:
        return {level: _per_image(lambda y, lv=level: _reconstruct_one(
                    state, lv, y, None), embeddings[level])
                for level in state.config.score_levels}
    return {
        level: _per_image(functools.partial(_reconstruct_one, state, level),
                          embeddings[level], supports)
        for level in state.config.score_levels
    }


def score(state: SGFRState, embeddings) -> dict:
    """Per-level anomaly maps: the norm of SGFR's anomalous term e_l per location.

    SGFR Algorithm 2: M_S by subspace-based sampling at the reference level (SGFR
    eq. 6-7; or every entry, or the random subset, as ``config.sampling`` says),
    then Algorithm 1 over M_S at each scoring level (SGFR eq. 2-5).

    Args:
      state: a fitted :class:`SGFRState`.
      embeddings: dict level -> (B, h_l, w_l, c_l) test feature maps.

    Returns:
      dict level -> (B, h_l, w_l) maps for ``config.score_levels``; differentiable
      w.r.t. the embeddings on the selected supports.

    Raises:
      TypeError: ``state`` is not an :class:`SGFRState`, ``embeddings`` not a dict
        or not floating.
      ValueError: a level missing, shapes unlike the bank's, NaN or inf (concrete
        values; traced ones give NaN maps for the images concerned).
    """
    fn = "sgfr.score"
    check_instance(fn, "state", state, SGFRState)
    config = state.config
    emb = _check_embeddings(fn, state, embeddings,
                            (*config.score_levels, config.ref_level))
    supports = None if config.sampling == "none" else _supports(state, emb)
    return _poison(_maps(state, emb, supports), emb)


def loss_context(state: SGFRState, embeddings) -> jax.Array:
    """M_S of the initial images, which F2PAD's feature loss keeps fixed.

    Args:
      state: a fitted :class:`SGFRState`.
      embeddings: dict level -> (B, h_l, w_l, c_l) of the initial images n^(0).

    Returns:
      (B, s_ref) int32 bank entries (-1 padded), or (B, N) for ``sampling="none"``.

    Raises:
      TypeError: ``state`` is not an :class:`SGFRState`, ``embeddings`` not a dict
        or not floating.
      ValueError: a level missing, shapes unlike the bank's, NaN or inf (concrete
        values; traced ones give NaN maps for the images concerned).
    """
    fn = "sgfr.loss_context"
    check_instance(fn, "state", state, SGFRState)
    emb = _check_embeddings(fn, state, embeddings, (state.config.ref_level,))
    return _supports(state, jax.lax.stop_gradient(emb))


def feature_loss(state: SGFRState, embeddings, context) -> dict:
    """SGFR's maps with M_S fixed from the initial image (the F2PAD data term).

    Args:
      state: a fitted :class:`SGFRState`.
      embeddings: dict level -> (B, h_l, w_l, c_l) of the current estimate n.
      context: (B, s_ref) from :func:`loss_context`.

    Returns:
      dict level -> (B, h_l, w_l), differentiable w.r.t. the embeddings.

    Raises:
      TypeError: ``state`` is not an :class:`SGFRState`, ``embeddings`` not a dict
        or not floating.
      ValueError: a level missing, shapes unlike the bank's, NaN or inf (concrete
        values; traced ones give NaN maps for the images concerned), ``context``
        not (B, k) integer entries of the bank.
    """
    fn = "sgfr.feature_loss"
    check_instance(fn, "state", state, SGFRState)
    emb = _check_embeddings(fn, state, embeddings, state.config.score_levels)
    batch = next(iter(emb.values())).shape[0]
    context = jnp.asarray(context)
    n = state.banks[state.config.ref_level].shape[0]
    if (context.ndim != 2 or context.shape[0] != batch
            or context.shape[1] < state.config.s
            or not jnp.issubdtype(context.dtype, jnp.integer)):
        raise ValueError(f"{fn}: context must be (B, k) integer bank entries from "
                         f"sgfr.loss_context with B = {batch} and k >= s = "
                         f"{state.config.s}; got {tuple(context.shape)} "
                         f"{context.dtype}.")
    if _checks.is_concrete(context) and context.size and (
            int(context.max()) >= n or int(context.min()) < -1):
        raise ValueError(f"{fn}: context entries must be in -1..{n - 1}.")
    return _poison(_maps(state, emb, context.astype(jnp.int32)), emb)


class RepresentationError(NamedTuple):
    """SGFR eq. 9 per test image, for the reconstruction and for feature matching.

    Attributes:
      reconstruction: (B,) float32 mean over locations of ‖x − x*‖₂, x* the
        reconstruction from M_S (SGFR eq. 8).
      matching: (B,) float32 mean over locations of ‖x − x*‖₂, x* the nearest
        patch among all locations of the s_ref nearest bank images (SPADE-style).
      support: (B, s_ref) int32 M_S of the reconstruction (-1 padded).
      neighbours: (B, s_ref) int32 the bank images of the matching, nearest first.
    """

    reconstruction: jax.Array
    matching: jax.Array
    support: jax.Array
    neighbours: jax.Array


def _matching_one(state: SGFRState, level: int, y_ref, y, *, chunk: int):
    """SPADE's matching of one image: k nearest images, then the nearest patch."""
    config = state.config
    bank_ref = state.banks[config.ref_level]
    flat = bank_ref.reshape(bank_ref.shape[0], -1)
    y_ref = y_ref.reshape(-1)
    cross = jnp.einsum("nm,m->n", flat, y_ref, precision=_HIGHEST)
    dist = jnp.diagonal(state.grams[config.ref_level]) - 2.0 * cross  # + ‖y‖², fixed
    neighbours = jax.lax.top_k(-dist, config.s_ref)[1].astype(jnp.int32)
    gallery = state.banks[level][neighbours].reshape(-1, y.shape[-1])
    queries = y.reshape(-1, y.shape[-1])
    d, _ = nearest_neighbors(queries, gallery, 1, squared=False,
                             bank_chunk=chunk, query_chunk=chunk)
    return jnp.mean(d[:, 0]), neighbours


def representation_error(state: SGFRState, embeddings, *, level: int | None = None,
                         chunk: int = 4096) -> RepresentationError:
    """How well M_S represents out-of-bank features: SGFR eq. 9 and Fig. 6.

    For each test image (nominal images not in the bank, for the paper's analysis)
    and each location of ``level``, ‖x − x*‖₂ is averaged over the locations
    (SGFR eq. 9), for two choices of x*:

    * reconstruction: e_l of :func:`score`'s OMP over M_S (SGFR eq. 8), with M_S
      chosen as ``state.config.sampling`` says;
    * matching: the nearest patch feature among every location of the s_ref bank
      images nearest to the test image (Euclidean distance of the whole
      reference-level maps), SPADE's two-stage search (k nearest images, then
      the nearest patch among their locations), which PatchCore's memory of
      patches shares.

    Why SPADE-style: read literally ("the top-s_ref data that exhibit proximity in
    spatial distance to x_j are stored in M; x*_j is the nearest in M"), x*_j is
    the global nearest neighbour whatever s_ref is, and Fig. 6's matching curve
    could not depend on s_ref. Choosing the s_ref nearest images, as SPADE's
    k-NN image retrieval does, makes both methods use the same s_ref bank
    images, so the comparison is about how they use them (linear combination
    against one matched patch), as the paper's discussion says.

    To sweep s_ref (Fig. 6), replace the state's config:
    ``state.replace(config=dataclasses.replace(state.config, s_ref=k, s=k // 2))``
    (with ``sampling="random"`` the stored subset fixes s_ref: refit instead).

    Args:
      state: a fitted :class:`SGFRState`.
      embeddings: dict level -> (B, h_l, w_l, c_l) test feature maps, with the
        reference level and ``level``.
      level: the level compared (default: the first of ``score_levels``).
      chunk: rows per step of the patch search (memory knob; static).

    Returns:
      :class:`RepresentationError`.

    Raises:
      TypeError: ``state`` is not an :class:`SGFRState`.
      ValueError: ``level`` is not a level of the state, an embedding is missing
        or misshaped, or holds NaN or inf.
    """
    fn = "sgfr.representation_error"
    check_instance(fn, "state", state, SGFRState)
    config = state.config
    level = config.score_levels[0] if level is None else level
    if level not in state.banks:
        raise ValueError(f"{fn}: level must be one of {sorted(state.banks)}; "
                         f"got {level!r}.")
    _checks.check_int(fn, "chunk", chunk, low=1)
    emb = _check_embeddings(fn, state, embeddings, (config.ref_level, level))
    return _representation_error(state, emb, level, chunk)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _representation_error(state, emb, level, chunk):
    config = state.config
    support = _supports(state, emb)
    recon = _per_image(lambda y, sup: jnp.mean(
        _reconstruct_one(state, level, y, sup, norm="l2")), emb[level], support)
    matching, neighbours = jax.lax.map(
        lambda args: _matching_one(state, level, *args, chunk=chunk),
        (emb[config.ref_level], emb[level]))
    return RepresentationError(recon, matching, support, neighbours)


METHOD = register(
    Method(
        name="sgfr",
        config_type=SGFRConfig,
        state_type=SGFRState,
        embed=embed,
        fit=fit,
        score=score,
        init=init,
        presets=PRESETS,
        loss_context=loss_context,
        feature_loss=feature_loss,
    )
)
