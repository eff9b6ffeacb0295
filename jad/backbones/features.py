"""Pure feature extraction: ``extract_features(name, variables, images, levels)``."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp

from jad import _checks
from jad.backbones._xla import conv_jit
from jad.backbones.registry import LEVELS, build_module, check_name
from jad.ops.image import IMAGENET_MEAN, IMAGENET_STD, normalize_imagenet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "extract_features",
    "init_variables",
    "logits",
    "normalize_imagenet",
]

_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _check_channels(fn: str, images) -> None:
    if images.shape[-1] != 3:
        hint = (
            " It looks channels-first (NCHW); jad expects channels-last (NHWC)."
            if images.ndim >= 3 and images.shape[-3] == 3
            else ""
        )
        raise ValueError(
            f"{fn}: images must be (N, H, W, 3) RGB, channels last; got shape "
            f"{tuple(images.shape)}.{hint}"
        )


def _check_levels(fn: str, levels) -> tuple[int, ...]:
    if isinstance(levels, int):
        levels = (levels,)
    if not isinstance(levels, Iterable):
        raise TypeError(f"{fn}: levels must be an int or a sequence of ints.")
    levels = tuple(levels)
    if not levels:
        raise ValueError(f"{fn}: levels must not be empty.")
    for level in levels:
        _checks.check_int(fn, "levels", level, low=LEVELS[0], high=LEVELS[-1])
    return tuple(sorted({int(level) for level in levels}))


def _check_dtype(fn: str, dtype) -> str | None:
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError as err:
        raise TypeError(
            f"{fn}: dtype must be one of {_DTYPES}; got {dtype!r}."
        ) from err
    return _checks.check_choice(fn, "dtype", name, _DTYPES)


def _check_variables(fn: str, variables) -> None:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            f"{fn}: variables must be a mapping with 'params' and 'batch_stats' (as "
            "returned by load_pretrained, port_torchvision or init_variables); got "
            f"{type(variables).__name__}."
        )


def _check_images(fn: str, images) -> jax.Array:
    images = _checks.as_float_array(fn, "images", images)
    if images.ndim != 4:
        raise ValueError(
            f"{fn}: images must be (N, H, W, 3); got shape {tuple(images.shape)}."
        )
    _check_channels(fn, images)
    if 0 in images.shape[1:3]:
        # Any H, W >= 1 works (as in torchvision: every stage maps >= 1 to >= 1).
        raise ValueError(
            f"{fn}: images must have H and W >= 1; got shape {tuple(images.shape)}."
        )
    return images


@functools.partial(conv_jit, static_argnames=("name", "levels", "head", "dtype"))
def _apply(variables, images, *, name, levels, head, dtype):
    module = build_module(name, levels, head, dtype)
    return module.apply(variables, images)


def extract_features(
    name: str,
    variables,
    images,
    levels,
    *,
    dtype=None,
) -> dict[int, jax.Array]:
    """Hierarchical feature maps of a backbone.

    Pure and jitted (``name``, ``levels`` and ``dtype`` are static); differentiable
    w.r.t. ``images`` and ``variables``; vmaps over an extra leading axis. Only the
    stages up to the deepest requested level are computed. Called at top level it
    is compiled with :data:`CONV_COMPILER_OPTIONS` (XLA's faster CPU kernels for
    convolutions, see ``jad.backbones._xla``); inside your own ``jit`` your options
    apply.

    Args:
      name: backbone name (see :func:`jad.backbones.list_backbones`).
      variables: Flax variables ``{"params": ..., "batch_stats": ...}`` of that
        backbone.
      images: (N, H, W, 3) float array, already normalised with
        :func:`jad.ops.normalize_imagenet` (exactly what the torchvision model
        receives, channels last).
      levels: an int or a sequence of ints in 0..4; 0 is the stem (stride 2), 1-4
        the stages (strides 4, 8, 16, 32). See :func:`backbone_info` for channels.
      dtype: computation dtype: ``None`` (the images' dtype), ``"float32"`` or
        ``"bfloat16"`` (parameters are cast; features come back in that dtype).

    Returns:
      dict mapping each level to its (N, ceil(H / stride), ceil(W / stride), C)
      feature map (e.g. 64x64x256 ... 8x8x2048 for ``wide_resnet50_2`` at 256x256;
      the same sizes as torchvision's model for any H and W).

    Raises:
      ValueError: unknown name (the message lists valid names), images not
        (N, H, W, 3) with H, W >= 1, levels outside 0..4.
    """
    fn = "extract_features"
    check_name(fn, name)
    _check_variables(fn, variables)
    images = _check_images(fn, images)
    levels = _check_levels(fn, levels)
    dtype = _check_dtype(fn, dtype)
    return _apply(variables, images, name=name, levels=levels, head=False, dtype=dtype)


def logits(name: str, variables, images, *, dtype=None) -> jax.Array:
    """ImageNet class logits of a backbone (the classifier head).

    Args:
      name: backbone name.
      variables: Flax variables of that backbone.
      images: (N, H, W, 3) float array normalised with :func:`normalize_imagenet`.
      dtype: computation dtype, as in :func:`extract_features`.

    Returns:
      (N, 1000) logits (before the softmax), equal to torchvision's model output.

    Raises:
      ValueError: unknown name, images not (N, H, W, 3) with H, W >= 1.
    """
    fn = "logits"
    check_name(fn, name)
    _check_variables(fn, variables)
    images = _check_images(fn, images)
    dtype = _check_dtype(fn, dtype)
    return _apply(variables, images, name=name, levels=(4,), head=True, dtype=dtype)


def init_variables(name: str, *, key: jax.Array, image_size: int = 64) -> dict:
    """Randomly initialised variables of backbone ``name`` (Flax's initialisers).

    Useful for tests and for training from scratch; real work uses
    :func:`jad.backbones.load_pretrained`.

    Args:
      name: backbone name.
      key: a JAX PRNG key.
      image_size: spatial size of the dummy input used to trace the module.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with every layer, the head included
      (BatchNorm statistics are mean 0, variance 1).
    """
    check_name("init_variables", name)
    module = build_module(name, (0, 1, 2, 3, 4), True, None)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    # Jitted: Flax's op-by-op initialisation of a deep network takes tens of seconds.
    return dict(jax.jit(module.init)(key, dummy))
