"""Binary morphology on masks: dilation, erosion, opening, closing.

F2PAD dilates the backbone's initial mask before optimising inside it and opens the
final mask with a 3x3 structuring element (F2PAD §III-E). Masks are (..., H, W) bool;
the last two axes are processed, leading axes are batch axes. The footprint (scipy's
``structure``) is a static odd-sized bool array centred on its middle element.

Borders follow ``scipy.ndimage.binary_*`` by default: pixels outside the mask are
``False`` (``border="zero"``, scipy's ``border_value=0``) for every operation, so an
erosion also eats into the mask from the image border and a closing is not extensive
there. ``border="ignore"`` makes the outside neutral (``True`` for erosion, ``False``
for dilation), the default of ``skimage.morphology.binary_*`` (``mode="ignore"``);
``border="one"`` is scipy's ``border_value=1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks

__all__ = ["closing", "dilate", "erode", "opening"]

Border = Literal["zero", "one", "ignore"]
_BORDERS = ("zero", "one", "ignore")


def _footprint(fn: str, size, footprint, shape: tuple[int, int]) -> np.ndarray:
    """The static (kh, kw) bool footprint from ``size`` or ``footprint``.

    A ``size`` rectangle is built at most (2H + 1, 2W + 1) for (H, W) = ``shape``
    (see :func:`_shifts`), so a huge size allocates nothing huge.
    """
    if size is not None and footprint is not None:
        raise ValueError(f"{fn}: give size or footprint, not both.")
    if footprint is not None:
        if isinstance(footprint, jax.core.Tracer):
            raise TypeError(
                f"{fn}: footprint must be a concrete array (it is static); got a "
                "traced value."
            )
        fp = np.asarray(footprint)
        if fp.dtype != np.bool_:
            raise TypeError(f"{fn}: footprint must be a bool array; got {fp.dtype}.")
        if fp.ndim != 2 or fp.shape[0] % 2 == 0 or fp.shape[1] % 2 == 0:
            raise ValueError(
                f"{fn}: footprint must be (kh, kw) with odd kh and kw; got shape "
                f"{fp.shape}."
            )
        if not fp.any():
            raise ValueError(f"{fn}: footprint must contain at least one True.")
        return fp
    if size is None:
        size = 3
    if isinstance(size, Sequence) and not isinstance(size, (str, bytes)):
        if len(size) != 2:
            raise ValueError(f"{fn}: size must be an int or (kh, kw); got {size!r}.")
        kh = _checks.check_int(fn, "size[0]", size[0], low=1)
        kw = _checks.check_int(fn, "size[1]", size[1], low=1)
    else:
        kh = kw = _checks.check_int(fn, "size", size, low=1)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{fn}: size must be odd (centred footprint); got {size!r}.")
    return np.ones((min(kh, 2 * shape[0] + 1), min(kw, 2 * shape[1] + 1)), bool)


def _check_masks(fn: str, masks) -> jax.Array:
    try:
        masks = jnp.asarray(masks)
    except TypeError as err:
        raise TypeError(
            f"{fn}: masks must be a bool array; got {type(masks).__name__}."
        ) from err
    if masks.dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: masks must be a bool array; got dtype {masks.dtype} (binarise "
            "first, e.g. masks > 0.5)."
        )
    if masks.ndim < 2:
        raise ValueError(
            f"{fn}: masks must be (..., H, W); got shape {tuple(masks.shape)}."
        )
    if masks.shape[-2] < 1 or masks.shape[-1] < 1:
        raise ValueError(
            f"{fn}: masks must have H, W >= 1; got shape {tuple(masks.shape)}."
        )
    return masks


def _shifts(masks: jax.Array, footprint: np.ndarray, outside: bool, reduce, sign: int):
    """Reduces (any/all) the masks shifted by every footprint offset.

    ``sign = +1`` reads ``x[i + a - ca, j + b - cb]`` (erosion); ``sign = -1`` reads
    ``x[i - (a - ca), j - (b - cb)]`` (dilation: the footprint is reflected, as scipy).
    A full rectangle is done as a row pass then a column pass, and is first cut to
    at most (2H + 1, 2W + 1): beyond that every window already covers the whole
    image and some outside pixels on both sides, so the result is the same.
    """
    h, w = masks.shape[-2:]
    if footprint.all():
        kh, kw = footprint.shape
        footprint = np.ones((min(kh, 2 * h + 1), min(kw, 2 * w + 1)), bool)
    kh, kw = footprint.shape
    if footprint.all() and kh > 1 and kw > 1:
        rows = _shifts(masks, np.ones((1, kw), bool), outside, reduce, sign)
        return _shifts(rows, np.ones((kh, 1), bool), outside, reduce, sign)
    ch, cw = kh // 2, kw // 2
    pad = [(0, 0)] * (masks.ndim - 2) + [(ch, ch), (cw, cw)]
    padded = jnp.pad(masks, pad, constant_values=outside)
    out = None
    for a, b in zip(*np.nonzero(footprint), strict=True):
        da, db = sign * (a - ch), sign * (b - cw)
        part = padded[..., ch + da : ch + da + h, cw + db : cw + db + w]
        out = part if out is None else reduce(out, part)
    return out


def _border_value(border: str, neutral: bool) -> bool:
    return {"zero": False, "one": True, "ignore": neutral}[border]


def _dilate(masks, fp, border):
    return _shifts(masks, fp, _border_value(border, False), jnp.logical_or, -1)


def _erode(masks, fp, border):
    return _shifts(masks, fp, _border_value(border, True), jnp.logical_and, +1)


def _prepare(fn, masks, size, footprint, border):
    masks = _check_masks(fn, masks)
    fp = _footprint(fn, size, footprint, masks.shape[-2:])
    _checks.check_choice(fn, "border", border, _BORDERS)
    return masks, fp


def dilate(
    masks: jax.typing.ArrayLike,
    *,
    size: int | tuple[int, int] | None = None,
    footprint: np.ndarray | None = None,
    border: Border = "zero",
) -> jax.Array:
    """Binary dilation: a pixel is set when the reflected footprint hits the mask.

    Equals ``scipy.ndimage.binary_dilation(masks, structure=footprint,
    border_value=0)`` per image (F2PAD's dilation of the initial mask, §III-E).

    Args:
      masks: (..., H, W) bool masks; leading axes are batch axes.
      size: odd int or (kh, kw) odd ints: a full rectangular footprint. Default 3
        (the 3x3 square; scipy's default is the 3x3 cross) when ``footprint`` is not
        given.
      footprint: optional static (kh, kw) bool array with odd sides (scipy's
        ``structure``), centred on its middle element; e.g. a disk.
      border: value of the pixels outside the image: ``"zero"`` (scipy's default
        ``border_value=0``), ``"one"`` (scipy's ``border_value=1``) or ``"ignore"``
        (neutral: ``True`` for erosion, ``False`` for dilation; scikit-image's
        default).

    Returns:
      (..., H, W) bool masks.

    Raises:
      TypeError: non-bool ``masks`` or ``footprint``, non-int ``size``.
      ValueError: fewer than 2 axes, an empty H or W, even or non-positive sizes,
        both ``size`` and ``footprint``, an empty footprint, unknown ``border``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import dilate
      >>> m = jnp.zeros((5, 5), bool).at[2, 2].set(True)
      >>> int(dilate(m).sum())
      9
    """
    masks, fp = _prepare("dilate", masks, size, footprint, border)
    return _dilate(masks, fp, border)


def erode(
    masks: jax.typing.ArrayLike,
    *,
    size: int | tuple[int, int] | None = None,
    footprint: np.ndarray | None = None,
    border: Border = "zero",
) -> jax.Array:
    """Binary erosion: a pixel stays set when the whole footprint lies in the mask.

    Equals ``scipy.ndimage.binary_erosion(masks, structure=footprint,
    border_value=0)`` per image: with the default border, pixels within the
    footprint's half-size of the image border are cleared.

    Args:
      masks: (..., H, W) bool masks; leading axes are batch axes.
      size: odd int or (kh, kw) odd ints: a full rectangular footprint. Default 3
        (the 3x3 square; scipy's default is the 3x3 cross) when ``footprint`` is not
        given.
      footprint: optional static (kh, kw) bool array with odd sides (scipy's
        ``structure``), centred on its middle element; e.g. a disk.
      border: value of the pixels outside the image: ``"zero"`` (scipy's default
        ``border_value=0``), ``"one"`` (scipy's ``border_value=1``) or ``"ignore"``
        (neutral: ``True`` for erosion, ``False`` for dilation; scikit-image's
        default).

    Returns:
      (..., H, W) bool masks.

    Raises:
      TypeError: non-bool ``masks`` or ``footprint``, non-int ``size``.
      ValueError: fewer than 2 axes, an empty H or W, even or non-positive sizes,
        both ``size`` and ``footprint``, an empty footprint, unknown ``border``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import erode
      >>> int(erode(jnp.ones((5, 5), bool)).sum()), int(
      ...     erode(jnp.ones((5, 5), bool), border="ignore").sum())
      (9, 25)
    """
    masks, fp = _prepare("erode", masks, size, footprint, border)
    return _erode(masks, fp, border)


def opening(
    masks: jax.typing.ArrayLike,
    *,
    size: int | tuple[int, int] | None = None,
    footprint: np.ndarray | None = None,
    border: Border = "zero",
) -> jax.Array:
    """Binary opening (erode, then dilate): removes specks smaller than the footprint.

    Equals ``scipy.ndimage.binary_opening`` per image; F2PAD opens its final mask with
    a 3x3 footprint (§III-E.3), the default here.

    Args:
      masks: (..., H, W) bool masks; leading axes are batch axes.
      size: odd int or (kh, kw) odd ints: a full rectangular footprint. Default 3
        (the 3x3 square; scipy's default is the 3x3 cross) when ``footprint`` is not
        given.
      footprint: optional static (kh, kw) bool array with odd sides (scipy's
        ``structure``), centred on its middle element; e.g. a disk.
      border: value of the pixels outside the image: ``"zero"`` (scipy's default
        ``border_value=0``), ``"one"`` (scipy's ``border_value=1``) or ``"ignore"``
        (neutral: ``True`` for erosion, ``False`` for dilation; scikit-image's
        default).

    Returns:
      (..., H, W) bool masks.

    Raises:
      TypeError: non-bool ``masks`` or ``footprint``, non-int ``size``.
      ValueError: fewer than 2 axes, an empty H or W, even or non-positive sizes,
        both ``size`` and ``footprint``, an empty footprint, unknown ``border``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import opening
      >>> m = jnp.zeros((7, 7), bool).at[1:5, 1:5].set(True).at[6, 6].set(True)
      >>> int(opening(m).sum())
      16
    """
    masks, fp = _prepare("opening", masks, size, footprint, border)
    return _dilate(_erode(masks, fp, border), fp, border)


def closing(
    masks: jax.typing.ArrayLike,
    *,
    size: int | tuple[int, int] | None = None,
    footprint: np.ndarray | None = None,
    border: Border = "zero",
) -> jax.Array:
    """Binary closing (dilation then erosion): fills holes smaller than the footprint.

    Equals ``scipy.ndimage.binary_closing`` per image. With the default
    ``border="zero"`` (scipy's) the erosion clears mask pixels at the image border, so
    the closing is not extensive there; use ``border="ignore"`` for the textbook
    closing.

    Args:
      masks: (..., H, W) bool masks; leading axes are batch axes.
      size: odd int or (kh, kw) odd ints: a full rectangular footprint. Default 3
        (the 3x3 square; scipy's default is the 3x3 cross) when ``footprint`` is not
        given.
      footprint: optional static (kh, kw) bool array with odd sides (scipy's
        ``structure``), centred on its middle element; e.g. a disk.
      border: value of the pixels outside the image: ``"zero"`` (scipy's default
        ``border_value=0``), ``"one"`` (scipy's ``border_value=1``) or ``"ignore"``
        (neutral: ``True`` for erosion, ``False`` for dilation; scikit-image's
        default).

    Returns:
      (..., H, W) bool masks.

    Raises:
      TypeError: non-bool ``masks`` or ``footprint``, non-int ``size``.
      ValueError: fewer than 2 axes, an empty H or W, even or non-positive sizes,
        both ``size`` and ``footprint``, an empty footprint, unknown ``border``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jad.ops import closing
      >>> m = jnp.zeros((7, 7), bool).at[1:6, 1:6].set(True).at[3, 3].set(False)
      >>> bool(closing(m)[3, 3])
      True
    """
    masks, fp = _prepare("closing", masks, size, footprint, border)
    return _erode(_dilate(masks, fp, border), fp, border)
