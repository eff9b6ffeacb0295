"""Image and map operations shared by the methods: blur, resize, binary morphology.

All functions are pure, jittable and vmappable; :func:`gaussian_blur` and
:func:`resize` are differentiable (F2PAD back-propagates through them). Maps are
(..., H, W); images are (..., H, W, C) (``resize(..., channels_last=True)``); masks are
(..., H, W) bool.
"""

from jad.ops.filters import gaussian_blur
from jad.ops.morphology import closing, dilate, erode, opening
from jad.ops.resize import resize

__all__ = ["closing", "dilate", "erode", "gaussian_blur", "opening", "resize"]
