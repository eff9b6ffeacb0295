"""PSDL: patchwise sparse dictionary learning (PSDL paper, sec. 2; appendix A).

One dictionary per feature location z: the N training feature vectors s_z at z
(one per image) learn a square m x m dictionary D_z by K-SVD (PSDL sec. 2.2,
:func:`jad.sparse.ksvd`; approximate K-SVD, DCT initialisation, 20 iterations,
OMP sparsity m/4: PSDL appendix A.1-A.3). A signal's code x_z (OMP with D_z) gives two
numbers, the L1 norm ``‖x_z‖₁`` and the reconstruction error of ``D_z x_z`` (PSDL
sec. 2.3); their bivariate Gaussian over the training set (mean, covariance + 0.01 I)
scores a test location by the Mahalanobis distance, upsampled bicubically, blurred
with sigma 4, the image score being the map's maximum.

Where the paper is silent this follows its authors' code (PSDL-Anomaly-Detection,
``train.py`` and ``evaluate.py``; sparselandtools' ``ApproximateKSVD``):

* channels: d = floor(sqrt(C)) and the first d² channels are kept, the vector read
  as a d x d patch for the separable 2-D DCT initialisation (``channels="square"``);
* several levels: [level 3, avgpool2(level 2), avgpool4(level 1)] concatenated on
  the coarsest grid before learning, the surplus channels dropped from the finest
  level (``fusion="stack"``, the code's ``MULTIPLE``). Table 1's labels read the
  wrong way round ("1+2+3" looks like a concatenation), but sec. 3.1.1 defines
  "1,2,3" as the maps combined "in the dictionary learning phase" and "1+2+3" as
  combined "in the calculation", and calls the last column ("1,2,3") the best:
  jad follows the text, ``"stack"`` is the paper's "1,2,3" and ``"separate"``
  (one set of dictionaries per level, maps summed after upsampling) its "1+2+3";
* the reconstruction error is squared (``error="squared"``; the text says
  "Euclidean distance": ``"l2"``), the training statistics come from the codes
  K-SVD ends with (``statistics="ksvd"``; ``"omp"`` codes the training signals
  afresh with the final dictionaries, as test signals are), the distance is the
  square root of the quadratic form;
* maps are min-max normalised per class ("normalised according to the class"): the
  code takes the min and max over the class's test set; jad calibrates them on the
  training images' maps and stores them in the state (:func:`calibrate`,
  :func:`calibrate_classes`), so a test image is scored alone. Per-class AUROC does
  not change under it; it matters for one threshold across classes.

All classes at once (PSDL's point, sec. 2.3): fit one model on the embeddings of every
category of a dataset with ``classes=(...)`` in the config, calibrate each class on
its own training maps (:func:`calibrate_classes`) and score a class's images with
:func:`select_class`.

Scale: K-SVD's memory grows as N·s·m per location (OMP's correlation table), so the
locations are learnt in chunks sized from ``fit_memory_mib``, with a progress bar;
within a chunk they are vmapped, which maps them one after another on CPU and in
parallel on accelerators (the custom batching rules of :mod:`jad.sparse`). The
per-location Gram matrices are kept in the state for scoring.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jad import _checks, ops
from jad.methods.base import (
    Method,
    check_config_fields,
    check_instance,
    check_levels,
    check_postprocess,
    register,
)
from jad.ops._triangular import cho_solve
from jad.sparse import (
    dct_dictionary,
    haar_dictionary,
    ksvd,
    omp,
    omp_gram,
    random_dictionary,
)

__all__ = [
    "PRESETS",
    "PSDLConfig",
    "PSDLState",
    "calibrate",
    "calibrate_classes",
    "code_statistics",
    "embed",
    "feature_loss",
    "fit",
    "init",
    "loss_context",
    "min_images",
    "score",
    "select_class",
    "signal_dims",
]

_FUSIONS = ("stack", "separate")
_CHANNELS = ("square", "all")
_INITS = ("dct", "haar", "random")
_KSVD = ("approx", "exact")
_STATISTICS = ("ksvd", "omp")
_ERRORS = ("squared", "l2")
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PSDLConfig:
    """PSDL settings (defaults: the ``official`` preset, the authors' code).

    Attributes:
      levels: backbone levels read ((1, 2, 3): the code's ``MULTIPLE`` setting).
      fusion: ``"stack"``: the levels average-pooled to the coarsest grid and
        concatenated (coarsest first) before learning, one set of dictionaries;
        ``"separate"``: one set per level, the per-level maps combined after
        upsampling (``combine``; the paper sums them). Same thing for one level.
      channels: ``"square"``: the first d² channels, d = floor(sqrt(C)) (the
        code); ``"all"``: every channel (a C x C dictionary).
      max_channels: keep at most this many leading channels before the rule above
        (0: no cap); the ``demo`` preset's 36 lets 40 training images fit.
      init: dictionary initialisation, ``"dct"`` (separable 2-D DCT when the
        signal is a square patch, the code's ``DCTDictionary(d, d)``), ``"haar"``
        or ``"random"`` (PSDL Table 8); the same for every location.
      learn: run K-SVD; ``False`` keeps the initial dictionary ("DCT without
        learning", PSDL Table 8).
      n_iter: K-SVD iterations (20; PSDL Table 9).
      sparsity: OMP sparsity as a fraction of the dictionary size,
        ``n_nonzero = max(1, round(sparsity * m))`` (0.25; PSDL Table 10).
      ksvd: ``"approx"`` (Rubinstein et al.'s approximate K-SVD, the code) or
        ``"exact"`` (SVD, Aharon et al.).
      statistics: codes of the training statistics: ``"ksvd"`` (the ones K-SVD
        ends with, the code) or ``"omp"`` (a fresh OMP with the final
        dictionaries, as test signals are coded).
      error: reconstruction error ``‖D x - s‖²`` (``"squared"``, the code) or
        ``‖D x - s‖`` (``"l2"``, the paper's wording).
      regularization: added to the 2 x 2 covariance diagonal (0.01).
      seed: seed of the ``"random"`` initialisation (a config field, as PaDiM's
        channel subset: the fit's ``key``, ``jad fit --seed``, does not change it).
      normalize: per-class min-max normalisation of the maps, calibrated on the
        training maps (:func:`calibrate`); ``False`` leaves raw distances.
      classes: class names of an all-classes model (one normalisation each, see
        :func:`calibrate_classes`); ``()`` for a model of one class.
      fit_memory_mib: memory budget of one chunk of locations during the fit
        (does not change the result).
      upsample, sigma, blur_mode, combine, align_corners: shared
        post-processing (PSDL sec. 2.3: bicubic, sigma 4; maps of ``"separate"``
        levels summed).
    """

    levels: tuple[int, ...] = (1, 2, 3)
    fusion: str = "stack"
    channels: str = "square"
    max_channels: int = 0
    init: str = "dct"
    learn: bool = True
    n_iter: int = 20
    sparsity: float = 0.25
    ksvd: str = "approx"
    statistics: str = "ksvd"
    error: str = "squared"
    regularization: float = 0.01
    seed: int = 1024
    normalize: bool = True
    classes: tuple[str, ...] = ()
    fit_memory_mib: int = 1024
    upsample: str = "bicubic"
    sigma: float = 4.0
    blur_mode: str = "symmetric"
    combine: str = "sum"
    align_corners: bool = False

    def __post_init__(self):
        fn = "PSDLConfig"
        if not self.levels:
            raise ValueError(f"{fn}: levels must not be empty.")
        check_config_fields(
            fn, self,
            ints=("max_channels", "n_iter", "seed", "fit_memory_mib"),
            floats=("sparsity", "regularization"),
            bools=("learn", "normalize"),
        )
        levels = tuple(int(lv) for lv in self.levels)
        if len(set(levels)) != len(levels):
            raise ValueError(f"{fn}: levels must not repeat a level; got {levels}.")
        object.__setattr__(self, "levels", tuple(sorted(levels)))
        _checks.check_choice(fn, "fusion", self.fusion, _FUSIONS)
        _checks.check_choice(fn, "channels", self.channels, _CHANNELS)
        _checks.check_choice(fn, "init", self.init, _INITS)
        _checks.check_choice(fn, "ksvd", self.ksvd, _KSVD)
        _checks.check_choice(fn, "statistics", self.statistics, _STATISTICS)
        _checks.check_choice(fn, "error", self.error, _ERRORS)
        _checks.check_int(fn, "max_channels", self.max_channels, low=0)
        _checks.check_int(fn, "n_iter", self.n_iter, low=1)
        _checks.check_int(fn, "fit_memory_mib", self.fit_memory_mib, low=1)
        if not 0 < float(self.sparsity) <= 1:
            raise ValueError(f"{fn}: sparsity must be in (0, 1] (a fraction of the "
                             f"dictionary size); got {self.sparsity}.")
        if not 0 < float(self.regularization) < float("inf"):
            raise ValueError(f"{fn}: regularization must be finite and > 0; got "
                             f"{self.regularization}.")
        classes = self.classes
        if not isinstance(classes, (tuple, list)) or not all(
                isinstance(c, str) for c in classes):
            raise TypeError(f"{fn}: classes must be a tuple of str; got {classes!r}.")
        if len(set(classes)) != len(classes):
            raise ValueError(f"{fn}: classes must not repeat a name; got {classes}.")
        object.__setattr__(self, "classes", tuple(classes))
        check_postprocess(fn, self)


PRESETS = {
    # The first preset is the default config: the authors' code, TYPE="MULTIPLE".
    "official": PSDLConfig(),
    # The code's TYPE="SINGLE", LAYER="layer3".
    "single": PSDLConfig(levels=(3,)),
    # One set of dictionaries per level, maps summed (PSDL Table 1, sec. 3.1.1).
    "separate": PSDLConfig(fusion="separate"),
    # jad demo's 40 training images: level 3, 36 channels (6 x 6).
    "demo": PSDLConfig(levels=(3,), max_channels=36),
}


@flax.struct.dataclass
class PSDLState:
    """A fitted PSDL: per-location dictionaries and 2-D Gaussians, per group.

    Groups are the dictionaries' feature grids: the coarsest level for
    ``fusion="stack"`` (or one level), each level for ``"separate"``.

    Attributes:
      dictionaries: dict group -> (h, w, m, m) float32, unit-norm atoms as columns.
      grams: dict group -> (h, w, m, m) float32 ``DᵀD`` (scoring reuses them).
      mean: dict group -> (h, w, 2) float32 mean of (L1 norm, error).
      whitening: dict group -> (h, w, 2, 2) float32 inverse Cholesky factors of the
        regularised covariances.
      train_error: dict group -> (T, h, w) float32 mean over the training
        signals of ``‖s - D x‖²`` (summed over the m channels) after each K-SVD
        iteration (T = n_iter; without learning T = 1, the initial dictionary's
        OMP error): PSDL Figs. 2-4.
      norm_low, norm_high: (K,) float32 per-class min and max of the training
        maps (K = max(1, len(classes)); 0 and 1 until calibrated).
      active: () int32 the class whose normalisation ``score`` applies.
      config: the :class:`PSDLConfig` (static).
    """

    dictionaries: dict
    grams: dict
    mean: dict
    whitening: dict
    train_error: dict
    norm_low: jax.Array
    norm_high: jax.Array
    active: jax.Array
    config: PSDLConfig = flax.struct.field(pytree_node=False)


def signal_dims(config: PSDLConfig, channels: Mapping[int, int]) -> dict[int, int]:
    """The dictionary size m of each group, from the channels of each level.

    Args:
      config: a :class:`PSDLConfig`.
      channels: level -> channel count C (e.g. ``backbone_info(name).channels``).

    Returns:
      dict group -> m (``"square"``: the largest square d² <= C, after
      ``max_channels``; ``"all"``: C).
    """
    def dim(total):
        if config.max_channels:
            total = min(total, config.max_channels)
        return math.isqrt(total) ** 2 if config.channels == "square" else total

    if config.fusion == "stack":
        return {max(config.levels): dim(sum(channels[lv] for lv in config.levels))}
    return {lv: dim(channels[lv]) for lv in config.levels}


def min_images(config: PSDLConfig, channels: Mapping[int, int]) -> int:
    """Training images PSDL needs: N >= m for every dictionary (PSDL sec. 2.1).

    Args:
      config: a :class:`PSDLConfig`.
      channels: level -> channel count C.

    Returns:
      The largest dictionary size m over the groups (at least 2, for a
      covariance).
    """
    return max(2, *signal_dims(config, channels).values())


def _pool(x, factor):
    """Torch's ``AvgPool2d(factor)`` on (B, h, w, C): windows = strides, floored."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    hh, ww = h // factor, w // factor
    x = x[:, : hh * factor, : ww * factor]
    return x.reshape(b, hh, factor, ww, factor, c).mean(axis=(2, 4))


def embed(config: PSDLConfig, features: dict) -> dict:
    """The signals PSDL models: dict group -> (B, h, w, m).

    ``"stack"``: the levels, coarsest first, each finer one average-pooled by its
    size ratio to the coarsest grid (the code's ``[layer3, avgpool2(layer2),
    avgpool4(layer1)]``), concatenated, then the first m channels kept (so the
    surplus is dropped from the finest level's end, as the code does).
    ``"separate"``: each level's first m channels.

    Args:
      config: a :class:`PSDLConfig`.
      features: dict level -> (B, h_l, w_l, C_l) with ``config.levels``.

    Returns:
      dict group -> (B, h, w, m) (see :func:`signal_dims`).

    Raises:
      TypeError: ``config`` not a :class:`PSDLConfig`; non-floating features.
      ValueError: a level missing or not (B, h, w, C), or finer levels that do not
        average-pool onto the coarsest grid (``"stack"``).
    """
    check_instance("psdl.embed", "config", config, PSDLConfig)
    check_levels("psdl.embed", config, features)
    channels = {lv: features[lv].shape[-1] for lv in config.levels}
    dims = signal_dims(config, channels)
    if config.fusion == "separate":
        return {lv: features[lv][..., : dims[lv]] for lv in config.levels}
    coarse = max(config.levels)
    side = features[coarse].shape[1]
    parts = [_pool(features[lv], max(1, features[lv].shape[1] // side))
             for lv in sorted(config.levels, reverse=True)]
    grid = parts[0].shape[1:3]
    for lv, part in zip(sorted(config.levels, reverse=True), parts, strict=True):
        if part.shape[1:3] != grid:
            raise ValueError(
                f"psdl.embed: level {lv} of shape {tuple(features[lv].shape)} does "
                f"not average-pool onto level {coarse}'s {grid} grid.")
    return {coarse: jnp.concatenate(parts, axis=-1)[..., : dims[coarse]]}


def _n_nonzero(config, m: int) -> int:
    return max(1, min(m, round(float(config.sparsity) * m)))


def _initial(config: PSDLConfig, m: int) -> jax.Array:
    square = math.isqrt(m) ** 2 == m
    if config.init == "dct":
        return dct_dictionary(m, m, separable=square)
    if config.init == "haar":
        return haar_dictionary(m, m, separable=square)
    return random_dictionary(jax.random.key(config.seed), m, m)


def _features(config, dictionary, signals, codes):
    """(n, 2) (‖x‖₁, error) of (n, m) signals and their (n, m) codes (PSDL sec. 2.3)."""
    recon = jnp.matmul(codes, dictionary.T, precision=_HIGHEST)
    err = jnp.sum((signals - recon) ** 2, axis=-1)
    if config.error == "l2":  # a zero gradient at an exact fit, not NaN
        exact = err == 0
        err = jnp.where(exact, 0.0, jnp.sqrt(jnp.where(exact, 1.0, err)))
    return jnp.stack([jnp.sum(jnp.abs(codes), axis=-1), err], axis=-1)


class _Learning(NamedTuple):
    """The config fields the fit's program depends on (its static jit key)."""

    learn: bool
    n_iter: int
    sparsity: float
    ksvd: str
    statistics: str
    error: str
    regularization: float

    @classmethod
    def of(cls, config: PSDLConfig) -> _Learning:
        return cls(*(getattr(config, name) for name in cls._fields))


def _learn_location(config: _Learning, init_dict, signals):
    """One location: dictionary, Gaussian and error curve from (N, m) signals."""
    m = signals.shape[1]
    s = _n_nonzero(config, m)
    if config.learn:
        res = ksvd(signals, init_dict, s, config.n_iter, method=config.ksvd,
                   monotone=False, replace_unused=False)
        dictionary, codes, curve = res.dictionary, res.codes, res.errors**2
    else:
        dictionary = init_dict
        codes = omp(dictionary, signals, s).coef
        resid = signals - jnp.matmul(codes, dictionary.T, precision=_HIGHEST)
        curve = jnp.mean(jnp.sum(resid * resid, axis=1))[None]
    if config.statistics == "omp" and config.learn:
        codes = omp(dictionary, signals, s).coef
    feats = _features(config, dictionary, signals, codes)
    mean = jnp.mean(feats, axis=0)
    centred = feats - mean
    cov = jnp.matmul(centred.T, centred, precision=_HIGHEST) / (feats.shape[0] - 1)
    cov = cov + float(config.regularization) * jnp.eye(2, dtype=cov.dtype)
    gram = jnp.matmul(dictionary.T, dictionary, precision=_HIGHEST)
    return dictionary, gram, mean, cov, curve


@functools.partial(jax.jit, static_argnames=("config", "size"))
def _fit_chunk(config, signals, init_dict, first, *, size):
    """Locations first..first+size of (N, L, m) signals, vmapped."""
    chunk = jax.lax.dynamic_slice_in_dim(signals, first, size, axis=1)
    learn = functools.partial(_learn_location, config, init_dict)
    dictionary, gram, mean, cov, curve = jax.vmap(learn)(jnp.swapaxes(chunk, 0, 1))
    whitening = ops.cholesky_whitening(cov).whitening
    return dictionary, gram, mean, whitening, curve


def _chunk_size(config: PSDLConfig, num: int, m: int, locations: int) -> int:
    """Locations per chunk within ``fit_memory_mib``.

    Per location: OMP's (N, s, m) correlation table and a few (N, m) arrays (the
    signals, codes, residual and their copies), in float32.
    """
    s = _n_nonzero(config, m)
    per_location = 4 * (num * s * m + 8 * num * m + 6 * m * m)
    budget = int(config.fit_memory_mib) << 20
    return max(1, min(locations, budget // per_location))


def _check_train(fn: str, config: PSDLConfig, embeddings) -> dict:
    if not isinstance(embeddings, Mapping):
        raise TypeError(f"{fn}: embeddings must be a dict group -> (N, h, w, m) "
                        f"from psdl.embed; got {type(embeddings).__name__}.")
    groups = ({max(config.levels)} if config.fusion == "stack"
              else set(config.levels))
    if set(embeddings) != groups:
        raise ValueError(
            f"{fn}: embeddings must be psdl.embed's dict with groups "
            f"{sorted(groups)} for this config (levels {config.levels}, fusion "
            f"{config.fusion!r}); got groups {sorted(embeddings, key=str)}.")
    out, num = {}, None
    for group in sorted(embeddings):
        name = f"embeddings[{group}]"
        x = _checks.as_float_array(fn, name, embeddings[group])
        _checks.check_rank(fn, name, x, 4, "N, h, w, m")
        if min(x.shape[1:]) < 1 or (num is not None and x.shape[0] != num):
            raise ValueError(f"{fn}: {name} must be (N, h, w, m) with h, w, m >= 1 "
                             f"and one N for every group; got {tuple(x.shape)}.")
        num, m = x.shape[0], x.shape[-1]
        square = math.isqrt(m) ** 2 == m
        if (config.channels == "square" and not square) or (
                config.max_channels and m > config.max_channels):
            raise ValueError(
                f"{fn}: {name} has m = {m} channels, which psdl.embed does not give "
                f"for this config (channels={config.channels!r}, max_channels="
                f"{config.max_channels}): pass psdl.embed(config, features).")
        if num < max(m, 2):
            raise ValueError(
                f"{fn}: PSDL learns an m x m dictionary per location from the N "
                f"training images (PSDL sec. 2.1: N >= m): group {group} has m = "
                f"{m} channels, so it needs at least {max(m, 2)} training images; "
                f"got {num}. Use fewer channels (PSDLConfig(max_channels=...)), a "
                "level with fewer channels, or more images.")
        out[group] = x
    if not out:
        raise ValueError(f"{fn}: embeddings must hold at least one group.")
    for group, x in out.items():
        _checks.check_finite(fn, f"embeddings[{group}]", x)
    return out


def fit(config: PSDLConfig, embeddings, *, key: jax.Array | None = None,
        progress: bool = False) -> PSDLState:
    """Learns the per-location dictionaries and Gaussians (PSDL sec. 2.2-2.3).

    Args:
      config: a :class:`PSDLConfig`.
      embeddings: dict group -> (N, h, w, m) training signals from :func:`embed`,
        N >= m, finite.
      key: unused (the ``"random"`` initialisation uses ``config.seed``, so a
        saved config says which dictionaries the fit started from).
      progress: show a progress bar over the chunks of locations (Ctrl-C stops
        between chunks).

    Returns:
      :class:`PSDLState` (uncalibrated: ``norm_low`` 0 and ``norm_high`` 1).

    Raises:
      TypeError: ``config`` not a :class:`PSDLConfig`; embeddings not a dict of
        float arrays.
      ValueError: groups or channel counts that ``embed`` would not give for
        ``config``, a group not (N, h, w, m), N < m (checked before any work; the
        message says how many images are needed), NaN or inf in the embeddings,
        or fitted statistics that are not finite.
    """
    del key
    fn = "psdl.fit"
    check_instance(fn, "config", config, PSDLConfig)
    embeddings = _check_train(fn, config, embeddings)
    from tqdm.auto import tqdm

    fields = {name: {} for name in ("dictionaries", "grams", "mean", "whitening",
                                    "train_error")}
    work = []
    for group, x in embeddings.items():
        num, h, w, m = x.shape
        locations = h * w
        size = _chunk_size(config, num, m, locations)
        work.append((group, x, size, range(0, locations, size)))
    total = sum(len(starts) for *_, starts in work)
    with tqdm(total=total, desc="psdl: fit", unit="chunk", disable=not progress) as bar:
        for group, x, size, starts in work:
            num, h, w, m = x.shape
            locations = h * w
            signals = x.astype(jnp.float32).reshape(num, locations, m)
            init_dict = _initial(config, m)
            parts = []
            for start in starts:
                first = min(start, locations - size)
                out = _fit_chunk(_Learning.of(config), signals, init_dict, first,
                                 size=size)
                jax.block_until_ready(out)  # progress is real; Ctrl-C stops here
                parts.append(jax.tree.map(lambda a, k=start - first: a[k:], out))
                bar.update()
            joined = [jnp.concatenate(p) for p in zip(*parts, strict=True)]
            dictionary, gram, mean, whitening, curve = joined
            if not (bool(jnp.all(jnp.isfinite(mean)))
                    and bool(jnp.all(jnp.isfinite(whitening)))):
                raise ValueError(
                    f"{fn}: the fitted Gaussians of group {group} are not finite "
                    f"(embeddings as large as {float(jnp.max(jnp.abs(x))):.3g}; "
                    "are the images ImageNet-normalised?).")
            fields["dictionaries"][group] = dictionary.reshape(h, w, m, m)
            fields["grams"][group] = gram.reshape(h, w, m, m)
            fields["mean"][group] = mean.reshape(h, w, 2)
            fields["whitening"][group] = whitening.reshape(h, w, 2, 2)
            fields["train_error"][group] = jnp.moveaxis(curve, 0, 1).reshape(
                -1, h, w)
    k = max(1, len(config.classes))
    return PSDLState(**fields, norm_low=jnp.zeros((k,), jnp.float32),
                     norm_high=jnp.ones((k,), jnp.float32),
                     active=jnp.zeros((), jnp.int32), config=config)


def init(config: PSDLConfig, embeddings, *, num_images: int = 0,
         key=None) -> PSDLState:
    """A state of the shapes :func:`fit` gives (zeros): the template for restoring.

    Args:
      config: a :class:`PSDLConfig`.
      embeddings: dict group -> (B, h, w, m) (only the shapes are read).
      num_images: unused (the state's size does not depend on N).
      key: unused.

    Returns:
      :class:`PSDLState` of zeros.
    """
    del num_images, key
    steps = config.n_iter if config.learn else 1
    z = jnp.zeros
    fields = {name: {} for name in ("dictionaries", "grams", "mean", "whitening",
                                    "train_error")}
    for group, x in embeddings.items():
        _, h, w, m = x.shape
        fields["dictionaries"][group] = z((h, w, m, m), jnp.float32)
        fields["grams"][group] = z((h, w, m, m), jnp.float32)
        fields["mean"][group] = z((h, w, 2), jnp.float32)
        fields["whitening"][group] = z((h, w, 2, 2), jnp.float32)
        fields["train_error"][group] = z((steps, h, w), jnp.float32)
    k = max(1, len(config.classes))
    return PSDLState(**fields, norm_low=z((k,), jnp.float32),
                     norm_high=jnp.ones((k,), jnp.float32),
                     active=z((), jnp.int32), config=config)


def _check_test(fn: str, state: PSDLState, embeddings) -> dict:
    if not isinstance(embeddings, Mapping):
        raise TypeError(f"{fn}: embeddings must be a dict group -> (B, h, w, m) "
                        f"from psdl.embed; got {type(embeddings).__name__}.")
    out, batch = {}, None
    for group, dictionary in state.dictionaries.items():
        if group not in embeddings:
            raise ValueError(f"{fn}: embeddings lack group {group} (the state has "
                             f"{sorted(state.dictionaries)}).")
        name = f"embeddings[{group}]"
        x = _checks.as_float_array(fn, name, embeddings[group])
        want = tuple(dictionary.shape[:3])
        if x.ndim != 4 or tuple(x.shape[1:]) != want or (
                batch is not None and x.shape[0] != batch):
            raise ValueError(
                f"{fn}: {name} must be (B, {', '.join(map(str, want))}) like the "
                f"state, one B for every group; got {tuple(x.shape)}.")
        batch = x.shape[0]
        _checks.check_finite(fn, name, x)
        out[group] = x.astype(jnp.float32)
    return out


def _locations(x):
    """(B, h, w, m) -> (h·w, B, m)."""
    b, h, w, m = x.shape
    return jnp.swapaxes(x.reshape(b, h * w, m), 0, 1)


def _stats(state: PSDLState, group, x, codes):
    """(h·w, B, 2) (‖x‖₁, error) from (h·w, B, m) signals and codes."""
    h, w, m, _ = state.dictionaries[group].shape
    return jax.vmap(functools.partial(_features, state.config))(
        state.dictionaries[group].reshape(h * w, m, m), x, codes)


def _distance(state: PSDLState, group, x, codes):
    """(B, h, w) Mahalanobis distances from (h·w, B, m) signals and codes."""
    h, w = state.dictionaries[group].shape[:2]
    feats = _stats(state, group, x, codes)
    dist = ops.mahalanobis(state.whitening[group].reshape(h * w, 1, 2, 2),
                           state.mean[group].reshape(h * w, 1, 2), feats)
    return jnp.swapaxes(dist, 0, 1).reshape(-1, h, w)


@functools.partial(jax.jit, static_argnums=1)
def _codes(state: PSDLState, group, x):
    """OMP codes (h·w, B, m) of (h·w, B, m) signals with the stored Grams.

    Jitted: called eagerly, the map over locations would compile afresh each time.
    """
    dictionary = state.dictionaries[group]
    h, w, m, _ = dictionary.shape
    dictionary = dictionary.reshape(h * w, m, m)
    xy = jnp.einsum("lbm,lmk->lbk", x, dictionary, precision=_HIGHEST)
    s = _n_nonzero(state.config, m)

    def one(args):
        gram, xy, norms = args
        return omp_gram(gram, xy, s, norms_squared=norms)

    # Locations in groups of about 256 MiB of OMP tables (B·s·m each): on
    # accelerators a group is vmapped, so WRN-50 sizes do not hold every
    # location's tables at once; on CPU jad.sparse maps them anyway.
    args = (state.grams[group].reshape(h * w, m, m), xy, jnp.sum(x * x, axis=-1))
    per_location = 4 * x.shape[1] * s * m
    if per_location == 0:  # no image
        return jax.vmap(lambda *a: one(a))(*args)
    group_size = max(1, min(h * w, (256 << 20) // per_location))
    return jax.lax.map(one, args, batch_size=group_size)


def _normalised(state: PSDLState, maps: dict):
    """Per-class min-max (affine: commutes with upsampling and blur)."""
    if not state.config.normalize:
        return maps
    low = state.norm_low[state.active]
    span = state.norm_high[state.active] - low
    # The final map sums the per-level maps for combine="sum": each takes 1/L of
    # the offset; mean and max take all of it.
    share = len(maps) if state.config.combine == "sum" else 1
    return {g: (m - low / share) / span for g, m in maps.items()}


def _output(maps: dict):
    return next(iter(maps.values())) if len(maps) == 1 else maps


def code_statistics(state: PSDLState, embeddings) -> dict:
    """Each location's (‖x‖₁, reconstruction error) of its OMP code (PSDL sec. 2.3).

    The two numbers whose Gaussian :func:`score` measures the distance to; the
    error is ``‖D x - s‖²`` (or its root with ``error="l2"``). PSDL Fig. 5 plots
    the error of test images.

    Args:
      state: a fitted :class:`PSDLState`.
      embeddings: dict group -> (B, h, w, m) from :func:`embed`.

    Returns:
      dict group -> (B, h, w, 2) float32.

    Raises:
      TypeError: ``state`` not a :class:`PSDLState`; non-float embeddings.
      ValueError: embeddings of other shapes than the state's, NaN or inf.
    """
    fn = "psdl.code_statistics"
    check_instance(fn, "state", state, PSDLState)
    embeddings = _check_test(fn, state, embeddings)
    out = {}
    for group, x in embeddings.items():
        b, h, w, _ = x.shape
        x = _locations(x)
        feats = _stats(state, group, x, _codes(state, group, x).coef)
        out[group] = jnp.swapaxes(feats, 0, 1).reshape(b, h, w, 2)
    return out


def score(state: PSDLState, embeddings):
    """Mahalanobis distance of each location's (‖x‖₁, error) (PSDL sec. 2.3).

    Args:
      state: a fitted :class:`PSDLState`.
      embeddings: dict group -> (B, h, w, m) from :func:`embed`.

    Returns:
      (B, h, w) maps (one group), or dict group -> (B, h, w) (``"separate"``),
      normalised by the active class's calibration when ``config.normalize``.
      Differentiable w.r.t. the embeddings on the selected OMP supports.

    Raises:
      TypeError: ``state`` not a :class:`PSDLState`; non-float embeddings.
      ValueError: embeddings of other shapes than the state's, NaN or inf.
    """
    fn = "psdl.score"
    check_instance(fn, "state", state, PSDLState)
    embeddings = _check_test(fn, state, embeddings)
    maps = {}
    for group, x in embeddings.items():
        x = _locations(x)
        maps[group] = _distance(state, group, x, _codes(state, group, x).coef)
    return _output(_normalised(state, maps))


def loss_context(state: PSDLState, embeddings0) -> dict:
    """The OMP supports of the initial image, fixed for F2PAD's feature loss.

    Args:
      state: a fitted :class:`PSDLState`.
      embeddings0: dict group -> (B, h, w, m) of the initial images.

    Returns:
      dict group -> (B, h, w, s) int32 atom indices (-1 where OMP stopped early).
    """
    fn = "psdl.loss_context"
    check_instance(fn, "state", state, PSDLState)
    embeddings0 = _check_test(fn, state, embeddings0)
    out = {}
    for group, x in embeddings0.items():
        b, h, w, _ = x.shape
        support = _codes(state, group, _locations(jax.lax.stop_gradient(x))).support
        out[group] = jnp.swapaxes(support, 0, 1).reshape(b, h, w, support.shape[-1])
    return out


def _fixed_codes(gram, xy, support):
    """Least squares on a fixed (s,) support (-1 = none): (m,) code."""
    valid = support >= 0
    index = jnp.where(valid, support, 0)
    sub = gram[index][:, index]
    sub = jnp.where(valid[:, None] & valid[None, :], sub, jnp.eye(len(support)))
    rhs = jnp.where(valid, xy[index], 0.0)
    coef = cho_solve(jnp.linalg.cholesky(sub), rhs)
    m = gram.shape[0]
    return jnp.zeros((m,), coef.dtype).at[jnp.where(valid, index, m)].add(
        jnp.where(valid, coef, 0.0), mode="drop")


def feature_loss(state: PSDLState, embeddings, context):
    """F2PAD on PSDL: the score with the initial image's OMP supports held fixed.

    Each location of the current estimate n is coded by least squares on the
    support OMP chose for the initial image (:func:`loss_context`), so the loss is
    smooth in n (no argmax) and the Mahalanobis distance of its (L1, error) is the
    per-location loss (no paper has F2PAD on PSDL; this mirrors F2PAD eq. 5's fixed
    candidates).

    Args:
      state: a fitted :class:`PSDLState`.
      embeddings: dict group -> (B, h, w, m) of the current estimate.
      context: from :func:`loss_context`.

    Returns:
      Maps as :func:`score`, differentiable w.r.t. the embeddings.
    """
    fn = "psdl.feature_loss"
    check_instance(fn, "state", state, PSDLState)
    embeddings = _check_test(fn, state, embeddings)
    maps = {}
    for group, x in embeddings.items():
        b, h, w, m = x.shape
        if not isinstance(context, Mapping) or group not in context:
            raise ValueError(f"{fn}: context must be psdl.loss_context's dict with "
                             f"group {group}.")
        support = jnp.asarray(context[group])
        want = (b, h, w, _n_nonzero(state.config, m))
        if support.shape != want or not jnp.issubdtype(support.dtype, jnp.integer):
            raise ValueError(f"{fn}: context[{group}] must be {want} int supports "
                             f"from psdl.loss_context; got {support.shape} "
                             f"{support.dtype}.")
        x = _locations(x)
        dictionary = state.dictionaries[group].reshape(h * w, m, m)
        xy = jnp.einsum("lbm,lmk->lbk", x, dictionary, precision=_HIGHEST)
        support = jnp.swapaxes(support.reshape(b, h * w, want[-1]), 0, 1)
        codes = jax.vmap(jax.vmap(_fixed_codes, in_axes=(None, 0, 0)))(
            state.grams[group].reshape(h * w, m, m), xy, support)
        maps[group] = _distance(state, group, x, codes)
    return _output(_normalised(state, maps))


def _raw_range(fn: str, name: str, state: PSDLState, maps):
    """(min, max) of raw maps from maps scored with the active class's normalisation.

    A constant map (max = min) gets max = min + 1, so that it normalises to 0.
    """
    maps = _checks.as_float_array(fn, name, maps)
    if maps.ndim != 3 or maps.size == 0:
        raise ValueError(f"{fn}: {name} must be (N, H, W) final maps with N >= 1; "
                         f"got shape {tuple(maps.shape)}.")
    _checks.check_finite(fn, name, maps)
    maps = maps.astype(jnp.float32)
    low, high = jnp.min(maps), jnp.max(maps)
    if state.config.normalize:  # the maps were normalised with the active class
        base = state.norm_low[state.active]
        span = state.norm_high[state.active] - base
        low, high = low * span + base, high * span + base
    return low, jnp.where(high > low, high, low + 1.0)


def calibrate(state: PSDLState, train_maps) -> PSDLState:
    """Per-class min-max from the training images' final maps (every class).

    The protocol's calibration hook (:func:`jad.pipeline.fit_detector` calls it):
    the min and max over all pixels of the (N, H, W) training maps become the
    normalisation of every class (for a model of one class, the class's).

    Args:
      state: a :class:`PSDLState`.
      train_maps: (N, H, W) final maps of the training images, scored with
        ``state``.

    Returns:
      The state with ``norm_low`` and ``norm_high`` set (unchanged when
      ``config.normalize`` is False). Constant maps give a span of 1.

    Raises:
      ValueError: ``train_maps`` not (N, H, W) with N >= 1, or not finite.
    """
    fn = "psdl.calibrate"
    check_instance(fn, "state", state, PSDLState)
    if not state.config.normalize:
        return state
    low, high = _raw_range(fn, "train_maps", state, train_maps)
    k = state.norm_low.shape[0]
    return state.replace(norm_low=jnp.full((k,), low, jnp.float32),
                         norm_high=jnp.full((k,), high, jnp.float32))


def calibrate_classes(state: PSDLState, maps_by_class: Mapping) -> PSDLState:
    """Per-class min-max of an all-classes model, from each class's training maps.

    Args:
      state: a :class:`PSDLState` fitted with ``config.classes``.
      maps_by_class: class name -> (N_c, H, W) final training maps of that class,
        scored with ``state`` (any active class).

    Returns:
      The state with each named class's ``norm_low``/``norm_high`` set.

    Raises:
      ValueError: a name not in ``config.classes``; ``config.normalize`` False;
        maps not (N, H, W) or not finite.
      TypeError: ``maps_by_class`` not a mapping.
    """
    fn = "psdl.calibrate_classes"
    check_instance(fn, "state", state, PSDLState)
    if not state.config.normalize:
        raise ValueError(f"{fn}: config.normalize is False: nothing to calibrate.")
    if not isinstance(maps_by_class, Mapping):
        raise TypeError(f"{fn}: maps_by_class must be a dict class name -> (N, H, W) "
                        f"maps; got {type(maps_by_class).__name__}.")
    low, high = state.norm_low, state.norm_high
    for name, maps in maps_by_class.items():
        index = _class_index(fn, state, name)
        lo, hi = _raw_range(fn, f"maps_by_class[{name!r}]", state, maps)
        low, high = low.at[index].set(lo), high.at[index].set(hi)
    return state.replace(norm_low=low, norm_high=high)


def _class_index(fn, state, name) -> int:
    classes = state.config.classes
    if name not in classes:
        raise ValueError(f"{fn}: unknown class {name!r}; the state's classes are "
                         f"{classes}.")
    return classes.index(name)


def select_class(state: PSDLState, name: str) -> PSDLState:
    """The state scoring with class ``name``'s normalisation.

    Args:
      state: a :class:`PSDLState` fitted with ``config.classes``.
      name: one of ``config.classes``.

    Returns:
      The state with ``active`` set (no recompilation: it is an array).
    """
    fn = "psdl.select_class"
    check_instance(fn, "state", state, PSDLState)
    return state.replace(active=jnp.int32(_class_index(fn, state, name)))


METHOD = register(
    Method(
        name="psdl",
        config_type=PSDLConfig,
        state_type=PSDLState,
        embed=embed,
        fit=fit,
        score=score,
        init=init,
        presets=PRESETS,
        loss_context=loss_context,
        feature_loss=feature_loss,
        calibrate=calibrate,
        min_images=min_images,
    )
)
