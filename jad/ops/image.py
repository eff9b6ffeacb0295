"""ImageNet normalisation of RGB images, as every reference pipeline applies it.

The backbones take images normalised with torchvision's ImageNet statistics:
``(rgb - IMAGENET_MEAN) / IMAGENET_STD`` per channel, channels last, ``rgb`` in
``[0, 1]``. Both functions work on numpy arrays (returning numpy) and jax arrays
(returning jax arrays, also under ``jit``), keep the input's float dtype and are
differentiable. Re-exported by :mod:`jad.data` and :mod:`jad.backbones`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "denormalize_imagenet",
    "normalize_imagenet",
]

# torchvision's ImageNet statistics (RGB order), as used by every reference.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _float_dtype(fn: str, images):
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        images = np.asarray(images)
        dtype = images.dtype
    if not jnp.issubdtype(np.dtype(dtype), jnp.floating):
        raise TypeError(
            f"{fn}: images must have a floating dtype (scale uint8 images to [0, 1] "
            f"first); got {dtype}."
        )
    shape = tuple(images.shape)
    if len(shape) < 1 or shape[-1] != 3:
        raise ValueError(f"{fn}: images must be (..., 3) RGB; got shape {shape}.")
    return images, np.dtype(dtype)


def normalize_imagenet(images):
    """Subtracts the ImageNet mean and divides by the standard deviation, per channel.

    Works on numpy arrays (returns numpy) and jax arrays (returns a jax array, also
    under ``jit``).

    Args:
      images: (..., 3) floating RGB in ``[0, 1]`` (e.g. (B, H, W, 3)).

    Returns:
      (..., 3) ``(images - IMAGENET_MEAN) / IMAGENET_STD``, of the input's dtype.

    Raises:
      TypeError: integer images.
      ValueError: the last axis is not 3.

    Example:
      >>> import numpy as np
      >>> normalize_imagenet(np.array([[0.485, 0.456, 0.406]], np.float32)).tolist()
      [[0.0, 0.0, 0.0]]
    """
    images, dtype = _float_dtype("normalize_imagenet", images)
    return (images - IMAGENET_MEAN.astype(dtype)) / IMAGENET_STD.astype(dtype)


def denormalize_imagenet(images):
    """Inverse of :func:`normalize_imagenet`: back to ``[0, 1]`` RGB (for overlays).

    Args:
      images: (..., 3) floating, ImageNet-normalised.

    Returns:
      (..., 3) ``images * IMAGENET_STD + IMAGENET_MEAN``, of the input's dtype (not
      clipped).

    Raises:
      TypeError: integer images.
      ValueError: the last axis is not 3.
    """
    images, dtype = _float_dtype("denormalize_imagenet", images)
    return images * IMAGENET_STD.astype(dtype) + IMAGENET_MEAN.astype(dtype)
