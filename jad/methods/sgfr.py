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

Work in progress (issue 19): not registered yet.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad.methods.base import (
    check_config_fields,
    check_instance,
    check_levels,
    check_postprocess,
)
from jad.sparse import omp_gram

__all__ = ["SGFRConfig", "SGFRState", "embed", "fit", "init", "score"]

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
        score_levels = tuple(self.score_levels)
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
        if not float(self.epsilon) >= 0:
            raise ValueError(f"{fn}: epsilon must be >= 0; got {self.epsilon}.")
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
    n = next(iter(banks.values())).shape[0]
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


def _sample_one(state: SGFRState, y_ref):
    """M_S of one test image (SGFR eq. 6-7): (s_ref,) indices, -1 padded."""
    config = state.config
    bank = state.banks[config.ref_level]
    flat = bank.reshape(bank.shape[0], -1)
    y = y_ref.reshape(-1)
    xy = jnp.einsum("nm,m->n", flat, y, precision=_HIGHEST)
    result = omp_gram(state.grams[config.ref_level], xy, config.s_ref,
                      norms_squared=jnp.sum(y * y), tol=config.epsilon,
                      selection="signed")
    return result.support


def _reconstruct_one(state: SGFRState, level: int, y, support):
    """e_l of one image from the bank entries ``support`` (-1: none), as a map."""
    config = state.config
    bank = state.banks[level]
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
    return _residual_map(e, config.norm)


def _supports(state: SGFRState, embeddings):
    config = state.config
    batch = embeddings[config.ref_level].shape[0]
    if config.sampling == "subspace":
        return jax.vmap(functools.partial(_sample_one, state))(
            embeddings[config.ref_level])
    n = state.banks[config.ref_level].shape[0]
    every = state.subset if config.sampling == "random" else jnp.arange(n)
    return jnp.broadcast_to(every.astype(jnp.int32), (batch, every.shape[0]))


def score(state: SGFRState, embeddings) -> dict:
    """Per-level anomaly maps: the norm of SGFR's anomalous term e_l per location.

    Args:
      state: a fitted :class:`SGFRState`.
      embeddings: dict level -> (B, h_l, w_l, c_l) test feature maps.

    Returns:
      dict level -> (B, h_l, w_l) maps for ``config.score_levels``; differentiable
      w.r.t. the embeddings on the selected supports.
    """
    check_instance("sgfr.score", "state", state, SGFRState)
    supports = _supports(state, embeddings)
    return {
        level: jax.vmap(functools.partial(_reconstruct_one, state, level))(
            embeddings[level], supports)
        for level in state.config.score_levels
    }
