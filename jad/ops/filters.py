"""Gaussian smoothing of anomaly maps, with the border modes of scipy and PyTorch.

Every method smooths its upsampled anomaly maps with a Gaussian of σ = 4 before scoring
(PatchCore, PaDiM, PSDL, SPADE), and F2PAD back-propagates through that blur, so it is
a pure, jittable, differentiable kernel here. Maps are (..., H, W): the last two axes
are blurred, leading axes are batch axes.

Border modes use :func:`jax.numpy.pad`'s vocabulary, which differs from scipy's:

=============  ==========================  =====================  =====================
jad ``mode``   extension of ``a b c d``    scipy.ndimage          PyTorch / kornia
=============  ==========================  =====================  =====================
"symmetric"    ``b a | a b c d | d c``     ``"reflect"`` (dflt.)  —
"reflect"      ``c b | a b c d | c b``     ``"mirror"``           ``"reflect"``
"edge"         ``a a | a b c d | d d``     ``"nearest"``          ``"replicate"``
"constant"     ``0 0 | a b c d | 0 0``     ``"constant"``, cval 0 ``"constant"`` (zeros)
"wrap"         ``c d | a b c d | a b``     ``"wrap"``             ``"circular"``
=============  ==========================  =====================  =====================

The official PatchCore, PaDiM, PSDL and SPADE code call ``scipy.ndimage.
gaussian_filter(σ=4)`` (``"symmetric"`` here, the default); anomalib's
``GaussianBlur2d`` pads with PyTorch's ``"reflect"`` (``"reflect"`` here). Both use the
radius ``int(4 σ + 0.5)`` (33 taps at σ = 4).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks

__all__ = ["gaussian_blur"]

Mode = Literal["symmetric", "reflect", "edge", "constant", "wrap"]
_MODES = ("symmetric", "reflect", "edge", "constant", "wrap")
# scipy's gaussian_filter default: radius = int(truncate * sigma + 0.5), truncate = 4.
_TRUNCATE = 4.0
# An axis of length n is blurred with a dense (n, n) banded matrix product when
# n <= _MATMUL_MAX_RATIO * taps, and with a sum of shifted slices otherwise. Measured on
# a 2-core CPU at 33 taps: equal speed near n = 224 (0.5 ms per 224x224 map), the matrix
# 3.5x faster at 64x64, the shifted sum 3x faster at 1024x1024.
_MATMUL_MAX_RATIO = 7
# Kernels wider than the axis are folded onto it (exactly), so the matrix costs O(n²)
# whatever the radius; the taps themselves are still computed: 2 * 2^20 + 1 of them
# (8 MB in float32, sigma ~ 2.6e5 px) at most. Wider blurs are refused.
_MAX_RADIUS = 2**20 - 1


def _gaussian_weights(sigma: jax.Array, radius: int, dtype) -> jax.Array:
    """(2 radius + 1,) normalised Gaussian taps, as scipy's ``_gaussian_kernel1d``.

    ``dtype`` is float32 or wider: tap positions up to 2^23 are exact there.
    """
    x = jnp.arange(-radius, radius + 1, dtype=dtype)
    # A guard instead of a NaN for sigma -> 0 (the blur tends to the identity).
    var = jnp.maximum(sigma * sigma, jnp.finfo(dtype).tiny)
    w = jnp.exp(-0.5 * x * x / var)
    return w / jnp.sum(w)


def _source_index(n: int, radius: int, mode: str) -> np.ndarray:
    """(n + 2 radius,) index into the axis for every padded position (-1 = zero)."""
    index = np.arange(n)
    if mode == "constant":
        return np.pad(index, radius, mode="constant", constant_values=-1)
    # numpy reflects repeatedly when radius > n, which is what scipy does.
    return np.pad(index, radius, mode=mode)


def _period(n: int, mode: str) -> int:
    """Period of the border extension of an axis of length n (0: not periodic)."""
    return {"symmetric": 2 * n, "reflect": max(2 * n - 2, 1), "wrap": n}.get(mode, 0)


def _fold(weights: jax.Array, radius: int, n: int, mode: str):
    """Taps folded onto an axis of length n: (weights, radius) with radius <= n.

    Exact, for every mode: the taps k and k + P of a periodic extension (period P)
    read the same pixel for every output, so their weights are summed; with
    ``"edge"`` every tap beyond ±(n - 1) reads the border pixel, so the tails are
    summed onto the taps ±(n - 1); with ``"constant"`` taps beyond ±(n - 1) only read
    zeros and are dropped (the weights stay normalised over all taps, as scipy's).
    """
    period = _period(n, mode)
    if period:
        short = period // 2  # 2 short + 1 >= period: one tap per residue
        if radius <= short:
            return weights, radius
        # Tap k goes to residue (k + short) mod P, i.e. to the tap k' in
        # [-short, P - 1 - short]: pad so that index j holds residue j mod P.
        front = (short - radius) % period
        total = front + weights.shape[0]
        padded = jnp.pad(weights, (front, -total % period))
        folded = padded.reshape(-1, period).sum(axis=0)
        return jnp.pad(folded, (0, 2 * short + 1 - period)), short
    short = n - 1
    if radius <= short:
        return weights, radius
    inner = weights[radius - short : radius + short + 1]
    if mode == "constant":
        return inner, short
    # "edge": the tails land on the border taps.
    left = jnp.sum(weights[: radius - short])
    right = jnp.sum(weights[radius + short + 1 :])
    return inner.at[0].add(left).at[-1].add(right), short


def _blur_matrix(weights: jax.Array, radius: int, n: int, mode: str) -> jax.Array:
    """(n, n) matrix A with the border extension folded in: blur(x) = A @ x."""
    taps = 2 * radius + 1
    index = _source_index(n, radius, mode)
    rows = np.repeat(np.arange(n), taps)
    tap = np.tile(np.arange(taps), n)
    cols = index[rows + tap]
    keep = cols >= 0
    matrix = jnp.zeros((n, n), weights.dtype)
    return matrix.at[rows[keep], cols[keep]].add(weights[tap[keep]])


def _blur_axis(x: jax.Array, weights: jax.Array, radius: int, mode: str, axis: int):
    """Convolves ``x`` with ``weights`` along ``axis`` (-1 or -2)."""
    n = x.shape[axis]
    taps = 2 * radius + 1
    if radius == 0:
        return x * weights[0]
    if n <= _MATMUL_MAX_RATIO * taps:
        matrix = _blur_matrix(*_fold(weights, radius, n, mode), n, mode)
        highest = jax.lax.Precision.HIGHEST
        if axis == -1:
            return jnp.matmul(x, matrix.T, precision=highest)
        return jnp.matmul(matrix, x, precision=highest)
    # Here radius < n / 14, so one reflection of the padding is enough.
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode=mode)
    # The kernel is symmetric: pair the taps k and 2r - k (half the multiplies).
    out = weights[radius] * jax.lax.slice_in_dim(padded, radius, radius + n, axis=axis)
    for k in range(radius):
        left = jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
        right = jax.lax.slice_in_dim(padded, taps - 1 - k, taps - 1 - k + n, axis=axis)
        out = out + weights[k] * (left + right)
    return out


def _radius(fn: str, sigma, radius) -> int:
    if radius is not None:
        radius = _checks.check_int(fn, "radius", radius, low=0)
        if radius > _MAX_RADIUS:
            raise ValueError(
                f"{fn}: radius must be at most {_MAX_RADIUS}; got {radius}."
            )
        return radius
    if not _checks.is_concrete(sigma):
        raise ValueError(
            f"{fn}: radius must be given when sigma is traced (it sets the kernel "
            "size, which must be static); pass radius=int(4 * sigma + 0.5)."
        )
    value = float(np.asarray(sigma))
    if _TRUNCATE * value + 0.5 >= _MAX_RADIUS + 1:
        raise ValueError(
            f"{fn}: sigma must be at most {(_MAX_RADIUS + 0.5) / _TRUNCATE:g} (a "
            f"kernel radius int(4 * sigma + 0.5) of at most {_MAX_RADIUS} taps); got "
            f"{sigma!r}. A blur that wide is flat over any map: use a smaller sigma."
        )
    return int(_TRUNCATE * value + 0.5)


def _check_sigma(fn: str, sigma) -> None:
    """``sigma``: a real scalar (type and shape also when traced), finite and > 0."""
    _checks.check_real_scalar(fn, "sigma", sigma)
    if _checks.is_concrete(sigma):
        value = float(np.asarray(sigma))
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{fn}: sigma must be a finite number > 0; got {sigma!r}.")


def gaussian_blur(
    maps: jax.typing.ArrayLike,
    sigma: jax.typing.ArrayLike,
    *,
    radius: int | None = None,
    mode: Mode = "symmetric",
) -> jax.Array:
    """Smooths the last two axes of ``maps`` with an isotropic Gaussian.

    The post-processing of PatchCore, PaDiM, PSDL and SPADE (σ = 4 on the upsampled
    anomaly map) and the blur F2PAD differentiates through. Separable: one 1-D
    convolution with the normalised taps ``exp(-x² / 2σ²)``, ``x = -radius..radius``,
    along W, then along H, exactly as ``scipy.ndimage.gaussian_filter``.

    Args:
      maps: (..., H, W) float maps; leading axes are batch axes.
      sigma: scalar > 0, the standard deviation in pixels. A traced value (it may be
        differentiated) when ``radius`` is given.
      radius: static int >= 0, taps on each side of the centre. Default
        ``int(4 * sigma + 0.5)``, scipy's ``truncate=4.0`` (16 at σ = 4); it needs a
        concrete ``sigma``.
      mode: border extension, in :func:`jax.numpy.pad`'s names: ``"symmetric"``
        (scipy's default ``"reflect"``, the official PatchCore/PaDiM/PSDL code),
        ``"reflect"`` (scipy ``"mirror"``, PyTorch ``"reflect"``, anomalib),
        ``"edge"`` (scipy ``"nearest"``), ``"constant"`` (zeros) or ``"wrap"``.

    Returns:
      (..., H, W) blurred maps, dtype of ``maps``.

    Raises:
      ValueError: ``maps`` with fewer than 2 axes or an empty H or W, ``sigma`` not
        a positive finite scalar or above ~2.6e5 (a radius over 2^20 - 1 taps), a
        ``radius`` outside 0..2^20 - 1, traced ``sigma`` without ``radius``, unknown
        ``mode``.
      TypeError: non-floating ``maps``, non-real ``sigma``, non-int ``radius``.

    Note:
      Borders wider than the map (radius >= H or W) are extended by repeated
      reflection, as scipy does; such kernels are first folded exactly onto the
      axis (taps one period apart read the same pixel; with ``"edge"`` the tails
      read the border pixel, with ``"constant"`` zeros), so a wide blur costs
      O(radius + n²) and still equals scipy's in every mode. The kernel is not cut
      to the map's size: that would renormalise the taps and change the result in
      every mode, so radii above 2^20 - 1 are refused instead. float16 and
      bfloat16 maps are blurred in float32 and cast back. Axes up to
      7 x (2 radius + 1) long are blurred by a product with a dense banded (n, n)
      matrix (full float32 precision on GPU/TPU too), longer axes by a sum of
      shifted slices; a NaN or inf in the matrix path spreads along its whole row
      and column, so give finite maps. Gradients flow to ``maps`` and to ``sigma``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import gaussian_blur
      >>> out = gaussian_blur(jnp.ones((2, 8, 8)), 1.0)
      >>> out.shape, bool(jnp.allclose(out, 1.0))
      ((2, 8, 8), True)
    """
    fn = "gaussian_blur"
    maps = _checks.as_float_array(fn, "maps", maps, min_rank=2)
    if maps.shape[-2] < 1 or maps.shape[-1] < 1:
        raise ValueError(
            f"{fn}: maps must have H, W >= 1 to blur; got shape {tuple(maps.shape)}."
        )
    _checks.check_choice(fn, "mode", mode, _MODES)
    _check_sigma(fn, sigma)
    radius = _radius(fn, sigma, radius)
    # float16/bfloat16 maps are blurred in float32 (taps beyond 2^8 would overflow
    # x² in float16) and cast back.
    work = jnp.promote_types(maps.dtype, jnp.float32)
    weights = _gaussian_weights(jnp.asarray(sigma, work), radius, work)
    out = _blur_axis(maps.astype(work), weights, radius, mode, -1)
    return _blur_axis(out, weights, radius, mode, -2).astype(maps.dtype)
