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
    """Raises ``ValueError`` unless ``features`` holds every level of ``config``.

    Args:
      fn: the caller, for the message.
      config: a method config with ``levels``.
      features: dict level -> (B, h, w, C) from the backbone.

    Returns:
      None.
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
      patch_map: (B, h, w) anomaly map at feature resolution.
      image_size: (H, W) of the input images (static).
      upsample: ``"bilinear"`` (align_corners False; official PatchCore, PaDiM),
        ``"nearest"`` (anomalib PatchCore) or ``"bicubic"`` (PSDL).
      sigma: blur standard deviation in pixels (0: no blur). Radius int(4 sigma + 0.5).
      blur_mode: border handling of the blur (``"symmetric"`` is scipy's default
        ``reflect``; ``"reflect"`` is torch's).

    Returns:
      (B, H, W) float map.
    """
    maps = ops.resize(patch_map, tuple(image_size), method=upsample)
    if sigma > 0:
        maps = ops.gaussian_blur(maps, sigma, mode=blur_mode)
    return maps


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
