"""The method protocol shared by every detector in jad.

A method is a set of pure functions around a frozen config and a state pytree:

* ``embed(config, features) -> embeddings``: backbone features (a dict level ->
  (B, h, w, C)) to the per-location representation the method models, e.g.
  PatchCore's locally aggregated patches (B, h, w, D) or PaDiM's concatenated channel
  subset. Jittable and differentiable.
* ``fit(config, embeddings, *, key, progress=False) -> state``: from the training
  embeddings (N, h, w, D); ``progress`` shows a bar for long fits (which stop between
  steps on Ctrl-C). States are ``flax.struct`` dataclasses: pytrees of arrays (jit,
  vmap, orbax) with the config as static metadata.
* ``score(state, embeddings) -> (B, h, w)``: anomaly map at feature resolution.
  Differentiable w.r.t. the embeddings, hence, through the backbone, w.r.t. the image.
* ``image_score(state, embeddings, patch_map) -> (B,)`` (optional): the method's own
  image score where its reference defines one (official PatchCore: the max patch
  score before upsampling); otherwise the pipeline takes the max of the final map.
* ``fit_batches(config, batches, *, key, progress=False) -> state`` (optional): the
  same fit from an iterable of (B, h, w, D) embedding batches, in memory independent
  of their number, for methods whose statistics are sums (PaDiM's means and
  covariances). The pipeline then streams each batch's embeddings into it instead of
  holding all of them.

Every config carries the shared post-processing fields ``levels`` (backbone levels to
extract), ``upsample`` (``"bilinear"`` | ``"nearest"`` | ``"bicubic"``), ``sigma``
(Gaussian blur of the upsampled map, 4 in every seed; 0 disables it) and
``blur_mode`` (``"symmetric"`` = scipy's default ``reflect``, ``"reflect"`` = torch's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks, ops

__all__ = [
    "Method",
    "check_config_fields",
    "check_instance",
    "check_levels",
    "check_postprocess",
    "get_method",
    "list_methods",
    "max_image_score",
    "postprocess",
    "register",
]

UPSAMPLE_METHODS = ("bilinear", "nearest", "bicubic")
BLUR_MODES = ("symmetric", "reflect", "edge", "constant", "wrap")


class Method(NamedTuple):
    """A registered method: its name, config type and pure functions."""

    name: str
    config_type: type
    state_type: type
    embed: Callable[[Any, dict], Any]
    fit: Callable[..., Any]
    score: Callable[[Any, Any], jax.Array]
    image_score: Callable[[Any, Any, jax.Array], jax.Array] | None = None
    fit_batches: Callable[..., Any] | None = None


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to the registry used by the pipeline and the CLI.

    Args:
      method: the :class:`Method` to register under ``method.name``.

    Returns:
      ``method`` unchanged.
    """
    _REGISTRY[method.name] = method
    return method


def list_methods() -> tuple[str, ...]:
    """Names of the registered methods.

    Returns:
      The names :func:`get_method` accepts, sorted.
    """
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Args:
      name: a name from :func:`list_methods`.

    Returns:
      The :class:`Method`.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown method {name!r}; valid methods are {', '.join(list_methods())}."
        )
    return _REGISTRY[name]


def check_instance(fn: str, name: str, value, expected: type) -> None:
    """Raises ``TypeError`` unless ``value`` is an instance of ``expected``.

    For example a state or config that belongs to another method.
    """
    if not isinstance(value, expected):
        raise TypeError(
            f"{fn}: {name} must be a {expected.__name__}; got {type(value).__name__}."
        )


def check_config_fields(fn: str, config, *, ints=(), floats=(), bools=()) -> None:
    """Type checks of a config's fields (at construction): ints, numbers, bools.

    ``levels`` must be a non-empty sequence of ints (not a string). Values are not
    converted, so a string never reaches a method's ``fit``.
    """
    levels = config.levels
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"{fn}: levels must be a sequence of ints; got {levels!r}.")
    for level in levels:
        _checks.check_int(fn, "levels", level, low=0)
    for name in ints:
        _checks.check_int(fn, name, getattr(config, name))
    for name in floats:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{fn}: {name} must be a number; got {value!r}.")
    for name in bools:
        if not isinstance(getattr(config, name), (bool, np.bool_)):
            raise TypeError(
                f"{fn}: {name} must be a bool; got {getattr(config, name)!r}."
            )


def check_levels(fn: str, config, features) -> None:
    """Raises unless ``features`` holds every level of ``config``, well formed.

    Each level of ``config.levels`` must be a floating (B, h, w, C) array with
    h, w, C >= 1 and the same B (0 allowed) as the other levels. Shapes and dtypes
    only, so the check also runs on tracers (under a caller's ``jit``).

    Args:
      fn: the caller, for the message.
      config: a method config with ``levels``.
      features: dict level -> (B, h, w, C) from the backbone.

    Returns:
      None.

    Raises:
      TypeError: ``features`` not a dict, a level not a floating array.
      ValueError: a missing level, a level not (B, h, w, C) with h, w, C >= 1, or
        levels of different batch sizes.
    """
    if not isinstance(features, dict):
        raise TypeError(
            f"{fn}: features must be a dict level -> (B, h, w, C); got "
            f"{type(features).__name__}."
        )
    missing = [level for level in config.levels if level not in features]
    if missing:
        raise ValueError(
            f"{fn}: features lack level(s) {', '.join(map(str, missing))} of "
            f"config.levels {tuple(config.levels)}; got levels "
            f"{', '.join(map(str, sorted(features))) or 'none'}."
        )
    batch = None
    for level in config.levels:
        f, name = features[level], f"features[{level}]"
        dtype = None
        if not (f is None or isinstance(f, (str, bytes))):
            try:
                dtype = jnp.result_type(f)
            except TypeError:
                pass
        if dtype is None:
            raise TypeError(
                f"{fn}: {name} must be a floating (B, h, w, C) array; got "
                f"{type(f).__name__}."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{fn}: {name} must have a floating dtype; got {dtype}.")
        shape = tuple(np.shape(f))
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise ValueError(
                f"{fn}: {name} must be (B, h, w, C) with h, w, C >= 1; got shape "
                f"{shape}."
            )
        if batch is None:
            batch = (level, shape[0])
        elif shape[0] != batch[1]:
            raise ValueError(
                f"{fn}: every level of features must hold the same batch; "
                f"features[{batch[0]}] has B = {batch[1]}, {name} has B = {shape[0]}."
            )


def check_postprocess(fn: str, config) -> None:
    """Validates a config's shared post-processing fields (at construction).

    Args:
      fn: the config's name, for the message.
      config: a method config with ``upsample``, ``sigma`` and ``blur_mode``.

    Returns:
      None; raises ``ValueError`` naming the field otherwise.
    """
    _checks.check_choice(fn, "upsample", config.upsample, UPSAMPLE_METHODS)
    _checks.check_choice(fn, "blur_mode", config.blur_mode, BLUR_MODES)
    check_config_fields(fn, config, floats=("sigma",))
    if not float(config.sigma) >= 0:
        raise ValueError(f"{fn}: sigma must be >= 0; got {config.sigma}.")
    if not config.levels:
        raise ValueError(f"{fn}: levels must not be empty.")


def postprocess(
    patch_map: jax.Array,
    image_size: tuple[int, int],
    *,
    upsample: str = "bilinear",
    sigma: float = 4.0,
    blur_mode: str = "symmetric",
) -> jax.Array:
    """Shared post-processing: upsample to the image size, then Gaussian blur.

    Args:
      patch_map: (B, h, w) float anomaly map at feature resolution (any leading
        axes: (..., h, w)).
      image_size: (H, W) of the input images (static ints >= 1).
      upsample: ``"bilinear"`` (align_corners False; official PatchCore, PaDiM),
        ``"nearest"`` (anomalib PatchCore) or ``"bicubic"`` (PSDL).
      sigma: blur standard deviation in pixels, a concrete number >= 0 (0: no
        blur). Radius int(4 sigma + 0.5).
      blur_mode: border handling of the blur (``"symmetric"`` is scipy's default
        ``reflect``; ``"reflect"`` is torch's).

    Returns:
      (B, H, W) float map.

    Raises:
      TypeError: non-floating ``patch_map``, non-int ``image_size``, ``sigma`` not
        a real number, or traced (it decides whether and how wide to blur).
      ValueError: ``patch_map`` with fewer than 2 axes or an empty h or w,
        ``image_size`` not two ints >= 1, ``sigma`` negative, NaN or inf, unknown
        ``upsample`` or ``blur_mode``.
    """
    fn = "postprocess"
    patch_map = _checks.as_float_array(fn, "patch_map", patch_map, min_rank=2)
    if min(patch_map.shape[-2:]) < 1:
        raise ValueError(
            f"{fn}: patch_map must be (B, h, w) with h, w >= 1; got shape "
            f"{tuple(patch_map.shape)}."
        )
    if (
        isinstance(image_size, (str, bytes))
        or not hasattr(image_size, "__len__")
        or len(image_size) != 2
    ):
        raise ValueError(
            f"{fn}: image_size must be a pair (H, W) of ints; got {image_size!r}."
        )
    image_size = tuple(
        _checks.check_int(fn, "image_size", n, low=1) for n in image_size
    )
    _checks.check_choice(fn, "upsample", upsample, UPSAMPLE_METHODS)
    _checks.check_choice(fn, "blur_mode", blur_mode, BLUR_MODES)
    sigma = _concrete_sigma(fn, sigma)
    maps = ops.resize(patch_map, image_size, method=upsample)
    if sigma > 0:
        maps = ops.gaussian_blur(maps, sigma, mode=blur_mode)
    return maps


def _concrete_sigma(fn: str, sigma) -> float:
    """``sigma`` as a Python float: a concrete real scalar, finite and >= 0.

    The blur's radius ``int(4 sigma + 0.5)`` and whether to blur at all (sigma 0)
    are static, so a traced sigma is refused here (``ops.gaussian_blur`` with an
    explicit ``radius`` differentiates w.r.t. sigma).
    """
    _checks.check_real_scalar(fn, "sigma", sigma)
    if not _checks.is_concrete(sigma):
        raise TypeError(
            f"{fn}: sigma must be a concrete number, not traced: it sets the blur's "
            "radius int(4 sigma + 0.5) (use ops.gaussian_blur with radius= to "
            "differentiate w.r.t. sigma)."
        )
    value = float(np.asarray(sigma))
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"{fn}: sigma must be a finite number >= 0 (0: no blur); got {sigma!r}."
        )
    return value


def max_image_score(maps: jax.Array) -> jax.Array:
    """Image score as the maximum of each map (the default rule).

    Args:
      maps: (B, H, W) anomaly maps.

    Returns:
      (B,) maxima; NaN where a map holds NaN.

    Note:
      XLA's CPU max reduction skips NaN on arrays of a few thousand elements or
      more (jax 0.10: ``jnp.max`` of 4096 ones and one NaN is 1.0), which would
      score a map with NaN regions by its finite part. NaN is propagated explicitly.
    """
    top = jnp.max(maps, axis=(-2, -1))
    return jnp.where(jnp.any(jnp.isnan(maps), axis=(-2, -1)), jnp.nan, top)
