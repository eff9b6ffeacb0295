"""Array operations shared by the methods: maps, patches, neighbours, statistics.

All functions are pure, jittable and vmappable, and sit below every other subpackage
(they import nothing of jad but its argument checks):

- maps and masks: :func:`gaussian_blur`, :func:`resize` (both differentiable; F2PAD
  back-propagates through them), binary morphology (:func:`dilate`, :func:`erode`,
  :func:`opening`, :func:`closing`). Maps are (..., H, W); images are (..., H, W, C)
  (``resize(..., channels_last=True)``); masks are (..., H, W) bool;
- images: ImageNet normalisation (:func:`normalize_imagenet`,
  :func:`denormalize_imagenet`);
- patches of (..., h, w, C) feature maps: :func:`unfold`, :func:`avg_pool`,
  :func:`adaptive_avg_pool`, :func:`align_levels`;
- memory banks: exact chunked k-NN (:func:`nearest_neighbors`) and random projections
  (:func:`dense_random_projection`, :func:`sparse_random_projection`,
  :func:`johnson_lindenstrauss_dim`);
- Gaussians: :func:`cholesky_whitening` and :func:`mahalanobis`.
"""

from jad.ops.filters import gaussian_blur
from jad.ops.gaussians import WhiteningResult, cholesky_whitening, mahalanobis
from jad.ops.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_imagenet,
    normalize_imagenet,
)
from jad.ops.morphology import closing, dilate, erode, opening
from jad.ops.neighbors import nearest_neighbors
from jad.ops.patches import adaptive_avg_pool, align_levels, avg_pool, unfold
from jad.ops.projections import (
    dense_random_projection,
    johnson_lindenstrauss_dim,
    sparse_random_projection,
)
from jad.ops.resize import resize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WhiteningResult",
    "adaptive_avg_pool",
    "align_levels",
    "avg_pool",
    "cholesky_whitening",
    "closing",
    "dense_random_projection",
    "denormalize_imagenet",
    "dilate",
    "erode",
    "gaussian_blur",
    "johnson_lindenstrauss_dim",
    "mahalanobis",
    "nearest_neighbors",
    "normalize_imagenet",
    "opening",
    "resize",
    "sparse_random_projection",
    "unfold",
]
