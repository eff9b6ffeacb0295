"""Resizing of anomaly maps and images with PyTorch's ``F.interpolate`` conventions.

The methods upsample their feature-resolution maps to the image with different rules,
and the numbers change at 1e-4 with the rule: the official PatchCore and PaDiM use
bilinear with ``align_corners=False``, CFLOW-AD bilinear with ``align_corners=True``,
PSDL bicubic (PyTorch's, Keys a = -0.75), anomalib's PatchCore and PaDiM's feature
concatenation nearest. :func:`resize` reproduces ``torch.nn.functional.interpolate``
for all of them (``jax.image.resize`` does not: its cubic is a = -0.5, it has no
``align_corners``, and its bilinear antialiases when downsampling).

Layout: maps are (..., H, W); images are (..., H, W, C) with ``channels_last=True``.
Each axis is resampled by a product with a small (out, in) weight matrix built once per
shape in numpy, so the op is linear, jittable, vmappable and differentiable.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks

__all__ = ["resize"]

Method = Literal["bilinear", "bicubic", "nearest"]
_METHODS = ("bilinear", "bicubic", "nearest")
# PyTorch's bicubic (upsample_bicubic2d): Keys' cubic convolution with a = -0.75, as
# OpenCV. Its antialiased variant (as PIL) uses a = -0.5.
_CUBIC_A = -0.75
_CUBIC_A_ANTIALIAS = -0.5


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at ``x``."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def _scale(n_in: int, n_out: int, align_corners: bool) -> float:
    """PyTorch's ``area_pixel_compute_scale`` (no explicit scale_factor)."""
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return n_in / n_out


def _linear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """PyTorch ``upsample_bilinear2d`` along one axis."""
    scale = _scale(n_in, n_out, align_corners)
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = scale * dst
    else:
        src = np.maximum(scale * (dst + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.minimum(src - i0, 1.0)
    i1 = np.minimum(i0 + 1, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), 1.0 - lam)
    np.add.at(matrix, (rows, i1), lam)
    return matrix


def _cubic_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """PyTorch ``upsample_bicubic2d`` along one axis: a = -0.75, clamped borders."""
    scale = _scale(n_in, n_out, align_corners)
    dst = np.arange(n_out, dtype=np.float64)
    # No clamp at 0 for cubic (area_pixel_compute_source_index with cubic=True).
    src = scale * dst if align_corners else scale * (dst + 0.5) - 0.5
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)  # guard_index_and_lambda
    t = np.clip(src - i0, 0.0, 1.0)
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k in range(-1, 3):
        # Taps outside the axis read the border pixel (upsample_get_value_bounded).
        np.add.at(matrix, (rows, np.clip(i0 + k, 0, n_in - 1)), _cubic(t - k, _CUBIC_A))
    return matrix


def _antialias_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """PyTorch's ``antialias=True`` path (``_compute_weights_aa``, as PIL).

    The filter is stretched by the scale when downsampling; weights are renormalised
    over the taps inside the axis.
    """
    scale = n_in / n_out
    size = 2 if method == "bilinear" else 4
    support = size * 0.5 * scale if scale >= 1.0 else size * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        # int() truncates toward zero, as the C++ static_cast<int64_t>.
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        x = (np.arange(lo, hi) - center + 0.5) * invscale
        if method == "bilinear":
            w = np.maximum(1.0 - np.abs(x), 0.0)
        else:
            w = _cubic(x, _CUBIC_A_ANTIALIAS)
        total = w.sum()
        matrix[i, lo:hi] = w / total if total != 0.0 else w
    return matrix


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch ``"nearest"``: ``min(floor(dst * (in / out)), in - 1)`` in float32.

    PyTorch evaluates the product in float32; doing the same keeps the rare indices
    where float32 and float64 floors differ identical to it.
    """
    if n_out == n_in:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) // 2
    scale = np.float32(np.float32(n_in) / np.float32(n_out))
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


@functools.lru_cache(maxsize=256)
def _weights(
    n_in: int, n_out: int, method: str, align_corners: bool, antialias: bool
) -> np.ndarray | None:
    """(n_out, n_in) float64 weights, or None when the axis is left unchanged."""
    if antialias:
        matrix = _antialias_matrix(n_in, n_out, method)
    elif method == "bilinear":
        matrix = _linear_matrix(n_in, n_out, align_corners)
    else:
        matrix = _cubic_matrix(n_in, n_out, align_corners)
    if n_in == n_out and np.array_equal(matrix, np.eye(n_in)):
        return None
    matrix.setflags(write=False)
    return matrix


def _check_shape(fn: str, shape) -> tuple[int, int]:
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 2
    ):
        raise ValueError(f"{fn}: shape must be a pair (H, W) of ints; got {shape!r}.")
    return (
        _checks.check_int(fn, "shape[0]", shape[0], low=1),
        _checks.check_int(fn, "shape[1]", shape[1], low=1),
    )


def resize(
    maps: jax.typing.ArrayLike,
    shape: Sequence[int],
    *,
    method: Method = "bilinear",
    align_corners: bool = False,
    antialias: bool = False,
    channels_last: bool = False,
) -> jax.Array:
    """Resizes the two spatial axes of ``maps`` as PyTorch's ``F.interpolate`` does.

    The upsampling of feature-resolution anomaly maps to the image (and of images to
    the network input). Each method is separable and equals
    ``torch.nn.functional.interpolate(x, size=shape, mode=method,
    align_corners=align_corners, antialias=antialias)`` up to float rounding.

    Args:
      maps: (..., H, W) maps, or (..., H, W, C) images when ``channels_last``. Float
        for ``"bilinear"``/``"bicubic"``; any dtype (bool masks too) for
        ``"nearest"``.
      shape: (H_out, W_out) static ints >= 1.
      method: ``"bilinear"``; ``"bicubic"`` (PyTorch's a = -0.75 cubic convolution,
        taps beyond the border read the border pixel; not ``jax.image.resize``'s
        a = -0.5); ``"nearest"`` (PyTorch's legacy rule: source index
        ``floor(dst * H / H_out)``, i.e. the top-left of the covered cell, not the
        nearest centre; what anomalib upsamples PatchCore maps with).
      align_corners: PyTorch's flag for ``"bilinear"``/``"bicubic"``: ``False`` maps
        pixel centres (``src = (dst + 0.5) * scale - 0.5``), ``True`` maps the corner
        pixels onto each other (``src = dst * (H - 1) / (H_out - 1)``, CFLOW-AD).
      antialias: PyTorch's flag (bilinear/bicubic, ``align_corners=False``): when
        downsampling, the filter is widened by the scale (a box-like average as PIL;
        the bicubic filter then uses a = -0.5, as PyTorch does). No effect on
        bilinear upsampling.
      channels_last: ``maps`` is (..., H, W, C) and the axes -3, -2 are resized.

    Returns:
      (..., H_out, W_out) (or (..., H_out, W_out, C)) with the dtype of ``maps``.

    Raises:
      ValueError: too few axes, an empty H or W, a bad ``shape``, unknown ``method``,
        ``align_corners`` or ``antialias`` with ``"nearest"``, ``antialias`` with
        ``align_corners``.
      TypeError: non-floating ``maps`` for bilinear/bicubic, non-numeric ``maps``
        for nearest, non-int ``shape``.

    Note:
      Interpolation weights are computed in float64 and applied by a matrix product
      at full float32 precision (also on GPU/TPU); PyTorch computes them in float32,
      so results agree to about 1e-6 relative. Bicubic overshoots: outputs can leave
      the input range, as in PyTorch. Unchanged axes are not touched. A NaN or inf
      spreads along its row and column (matrix product); give finite maps.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import resize
      >>> resize(jnp.array([[0.0, 1.0]]), (1, 4)).tolist()
      [[0.0, 0.25, 0.75, 1.0]]
    """
    fn = "resize"
    _checks.check_choice(fn, "method", method, _METHODS)
    out_h, out_w = _check_shape(fn, shape)
    rank = 3 if channels_last else 2
    letters = "..., H, W, C" if channels_last else "..., H, W"
    if method == "nearest":
        if align_corners or antialias:
            raise ValueError(
                f"{fn}: align_corners and antialias apply to 'bilinear' and 'bicubic' "
                "only (as in PyTorch); got method='nearest'."
            )
        try:
            maps = jnp.asarray(maps)
        except TypeError as err:
            raise TypeError(
                f"{fn}: maps must be a numeric or bool array; got "
                f"{type(maps).__name__}."
            ) from err
    else:
        maps = _checks.as_float_array(fn, "maps", maps)
        if antialias and align_corners:
            raise ValueError(f"{fn}: antialias=True supports align_corners=False only.")
    if maps.ndim < rank:
        raise ValueError(
            f"{fn}: maps must be ({letters}); got shape {tuple(maps.shape)}."
        )
    h_axis, w_axis = (-3, -2) if channels_last else (-2, -1)
    in_h, in_w = maps.shape[h_axis], maps.shape[w_axis]
    if in_h < 1 or in_w < 1:
        raise ValueError(
            f"{fn}: maps must have H, W >= 1 to resize; got shape {tuple(maps.shape)}."
        )
    if method == "nearest":
        out = maps
        if out_w != in_w:
            out = jnp.take(out, _nearest_index(in_w, out_w), axis=w_axis)
        if out_h != in_h:
            out = jnp.take(out, _nearest_index(in_h, out_h), axis=h_axis)
        return out
    highest = jax.lax.Precision.HIGHEST
    out = maps
    matrix_w = _weights(in_w, out_w, method, bool(align_corners), bool(antialias))
    if matrix_w is not None:
        matrix_w = jnp.asarray(matrix_w, maps.dtype)
        if channels_last:
            out = jnp.einsum("...hwc,pw->...hpc", out, matrix_w, precision=highest)
        else:
            out = jnp.matmul(out, matrix_w.T, precision=highest)
    matrix_h = _weights(in_h, out_h, method, bool(align_corners), bool(antialias))
    if matrix_h is not None:
        matrix_h = jnp.asarray(matrix_h, maps.dtype)
        if channels_last:
            out = jnp.einsum("oh,...hwc->...owc", matrix_h, out, precision=highest)
        else:
            out = jnp.matmul(matrix_h, out, precision=highest)
    return out
