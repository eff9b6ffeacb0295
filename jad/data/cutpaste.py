"""Cut-paste synthetic anomalies with exact ground-truth masks (F2PAD eq. 16, §IV-A.1).

F2PAD builds its evaluation set from normal images because real annotations are loose
(the masks of MVTec AD cover normal pixels too): a defective image is

    x_gen = (1 - m_src) ⊙ n_orig + m_src ⊙ a_src                (F2PAD eq. 16)

with ``m_src`` a ground-truth mask of the dataset, randomly resized, and ``a_src`` a
random colour (one per defect) or, for structural anomalies, a region of another normal
image. Where ``x_gen`` would stay close to ``n_orig`` its value is changed "by
multiplying a desired factor", so that every pixel of the mask really is anomalous.

Conventions: images are (H, W, C) float in [0, 1] (C = 3 for RGB), masks (H, W) bool.
Everything is jittable with static shapes and vmaps over keys (one defect per key).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad.ops import gaussian_blur

__all__ = ["CutPasteResult", "cut_paste", "random_defect_mask"]

Kind = Literal["color", "structural"]
_KINDS = ("color", "structural")
Region = Literal["any", "opposite_half"]
_REGIONS = ("any", "opposite_half")
Shape = Literal["ellipse", "blob", "scratch"]
_SHAPES = ("ellipse", "blob", "scratch")
_DEFAULT_MIN_DISTANCE = 0.2  # F2PAD leaves the "far" threshold open


class CutPasteResult(NamedTuple):
    """Result of :func:`cut_paste`.

    Attributes:
      image: (H, W, C) the defective image ``x_gen``, dtype of the input, in [0, 1].
      mask: (H, W) bool, exactly the pixels that were replaced; every one of them
        differs from the input by at least ``min_distance`` (Euclidean over channels).
    """

    image: jax.Array
    mask: jax.Array


def _max_min_distance(factor: float, channels: int) -> float:
    """Largest ``min_distance`` the push rule guarantees for ``factor`` (see Note)."""
    return (1.0 - factor) * math.sqrt(channels) / 2.0 / (1.0 + factor)


def _check_pair(fn, name, value):
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != 2
    ):
        raise ValueError(f"{fn}: {name} must be a pair (low, high); got {value!r}.")
    if all(_checks.is_concrete(v) for v in value):
        low, high = (float(np.asarray(v)) for v in value)
        if not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
            raise ValueError(
                f"{fn}: {name} must satisfy 0 < low <= high; got {value!r}."
            )


def _place_mask(key, sources, out_shape, scale_range, max_angle):
    """Picks a source mask and a pixel on it, scales, rotates and places it.

    The chosen source pixel (the anchor) lands exactly on a uniformly drawn image pixel
    and the transform is a rotation and scaling about it, sampled by nearest neighbour,
    so the placed mask always contains that pixel: it is never empty.
    """
    _, h, w = sources.shape
    height, width = out_shape
    k_src, k_anchor, k_pos, k_scale, k_angle = jax.random.split(key, 5)
    nonempty = jnp.any(sources, axis=(1, 2))
    index = jax.random.categorical(k_src, jnp.where(nonempty, 0.0, -jnp.inf))
    source = sources[index]
    flat = jax.random.categorical(k_anchor, jnp.where(source.ravel(), 0.0, -jnp.inf))
    anchor = jnp.stack([flat // w, flat % w]).astype(jnp.float32)
    position = jnp.stack(
        [
            jax.random.randint(k_pos, (), 0, height),
            jax.random.randint(jax.random.fold_in(k_pos, 1), (), 0, width),
        ]
    )
    low, high = (jnp.asarray(v, jnp.float32) for v in scale_range)
    scale = jnp.exp(
        jax.random.uniform(k_scale, (), jnp.float32, jnp.log(low), jnp.log(high))
    )
    max_angle = jnp.deg2rad(jnp.asarray(max_angle, jnp.float32))
    angle = jax.random.uniform(k_angle, (), jnp.float32, -max_angle, max_angle)
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    dy = (rows - position[0]).astype(jnp.float32)
    dx = (cols - position[1]).astype(jnp.float32)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Inverse map: image pixel -> source pixel (rotate by -angle, divide by scale).
    src_y = anchor[0] + (cos * dy + sin * dx) / scale
    src_x = anchor[1] + (-sin * dy + cos * dx) / scale
    iy = jnp.floor(src_y + 0.5).astype(jnp.int32)
    ix = jnp.floor(src_x + 0.5).astype(jnp.int32)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    mask = inside & source[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
    return mask, position


def _structural_source(key, other, position, region):
    """``other`` translated so that a random source pixel lands on ``position``."""
    height, width = other.shape[:2]
    k_y, k_x = jax.random.split(key)
    src_y = jax.random.randint(k_y, (), 0, height)
    if region == "any":
        src_x = jax.random.randint(k_x, (), 0, width)
    else:  # the other half, as F2PAD's capsule anomalies (footnote 1)
        half = width // 2
        left = position[1] < half
        lo = jnp.where(left, half, 0)
        hi = jnp.where(left, width, half)
        src_x = jax.random.randint(k_x, (), lo, hi)
    rows = jnp.clip(jnp.arange(height) - position[0] + src_y, 0, height - 1)
    cols = jnp.clip(jnp.arange(width) - position[1] + src_x, 0, width - 1)
    return other[rows[:, None], cols[None, :]]


def _push_away(anomaly, image, min_distance, factor):
    """Moves anomaly pixels closer than ``min_distance`` to the image away from it.

    F2PAD: "we change x_gen by multiplying a desired factor". A pixel whose original
    is bright (channel mean > 1/2) is darkened, ``a · factor``; one whose original is
    dark is brightened, ``1 - (1 - a) · factor`` (the factor applied to the distance to
    white). Both keep values in [0, 1].
    """
    distance = jnp.sqrt(jnp.sum((anomaly - image) ** 2, axis=-1, keepdims=True))
    bright = jnp.mean(image, axis=-1, keepdims=True) > 0.5
    pushed = jnp.where(bright, anomaly * factor, 1.0 - (1.0 - anomaly) * factor)
    return jnp.where(distance < min_distance, pushed, anomaly)


def cut_paste(
    key: jax.Array,
    image: jax.typing.ArrayLike,
    mask_source: jax.typing.ArrayLike,
    *,
    kind: Kind = "color",
    other_image: jax.typing.ArrayLike | None = None,
    scale_range: tuple[float, float] = (0.5, 1.5),
    max_angle: float = 180.0,
    min_distance: float | None = None,
    factor: float = 0.5,
    region: Region = "any",
) -> CutPasteResult:
    """Pastes one synthetic defect into a normal image (F2PAD eq. 16, §IV-A.1).

    ``x_gen = (1 - m) ⊙ n + m ⊙ a`` (F2PAD eq. 16): the mask ``m`` is one of the source
    masks (e.g. a dataset's ground truth, or :func:`random_defect_mask`), picked at
    random, randomly scaled and rotated about a random pixel of it, and placed so that
    pixel lands on a uniformly drawn image pixel; ``a`` is one random colour
    (``kind="color"``) or ``other_image`` translated by a random offset
    (``kind="structural"``, F2PAD's capsule anomalies).

    Args:
      key: PRNG key; the result is a deterministic function of it.
      image: (H, W, C) float in [0, 1], the normal image ``n_orig``.
      mask_source: (h, w) or (N, h, w) bool source masks, in the image's pixel scale;
        empty ones are never picked. Pixels mapped outside the source read ``False``;
        the placed mask is cropped by the image border.
      kind: ``"color"`` or ``"structural"``.
      other_image: (H, W, C) float in [0, 1], another normal image; required by, and
        only used with, ``kind="structural"``.
      scale_range: (low, high), 0 < low <= high: the mask is scaled by a factor drawn
        log-uniformly in this range.
      max_angle: rotation angle drawn uniformly in [-max_angle, max_angle] degrees;
        0 disables rotation.
      min_distance: the "far" threshold: anomaly pixels closer than this to the
        original (Euclidean norm over channels, [0, 1] units) are pushed away.
        ``0 < min_distance <= (1 - factor) √C / 2 / (1 + factor)`` (0.289 for RGB and
        0.167 for one channel at the default factor), which guarantees the push
        succeeds. Default (None): 0.2, or that bound when it is smaller.
      factor: the push factor, 0 < factor < 1 (see Note).
      region: where the structural source is taken: ``"any"`` offset, or
        ``"opposite_half"`` (from the left half when the defect sits in the right half
        and vice versa, F2PAD footnote 1).

    Returns:
      :class:`CutPasteResult` ``(image, mask)``: (H, W, C) defective image with the
      dtype of ``image``, values in [0, 1]; (H, W) bool mask of the replaced pixels,
      never empty when some source mask is non-empty.

    Raises:
      ValueError: bad shapes, an empty image, an all-empty concrete ``mask_source``,
        concrete values outside [0, 1], a bad range, ``min_distance`` or ``factor``,
        unknown ``kind`` or ``region``, ``other_image`` missing for ``"structural"``
        or given for ``"color"``.
      TypeError: ``key`` not a PRNG key, non-floating images, non-bool
        ``mask_source``.

    Note:
      Choices F2PAD leaves open (§IV-A.1): the colour is uniform in [0, 1]^C; the scale
      is log-uniform in ``scale_range``; placement is uniform over the image; rotation
      is uniform (MVTec defects have no orientation); the structural source is a pure
      translation of ``other_image`` (borders replicated). The "far" rule: where
      ``‖a - n‖ < min_distance``, ``a`` becomes ``a · factor`` if the original is
      bright (channel mean > 1/2) or ``1 - (1 - a) · factor`` if it is dark. Then
      ``‖x_gen - n‖ >= (1 - factor) · √C / 2 - factor · min_distance >=
      min_distance`` on every mask pixel (the bound on ``min_distance`` above), so the
      mask is exact: it is the set of changed pixels, also after 8-bit quantisation
      when ``min_distance > √C / 255``. Outside the mask the image is copied bit for
      bit. If every source mask is empty inside a trace, the mask comes back empty.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jad.data.cutpaste import cut_paste
      >>> image = jnp.full((16, 16, 3), 0.5)
      >>> source = jnp.zeros((5, 5), bool).at[1:4, 1:4].set(True)
      >>> out = cut_paste(jax.random.key(0), image, source)
      >>> changed = jnp.any(out.image != image, axis=-1)
      >>> bool(jnp.array_equal(changed, out.mask)), bool(out.mask.any())
      (True, True)
    """
    fn = "cut_paste"
    _checks.check_key(fn, "key", key)
    _checks.check_choice(fn, "kind", kind, _KINDS)
    _checks.check_choice(fn, "region", region, _REGIONS)
    image = _checks.as_float_array(fn, "image", image)
    _checks.check_rank(fn, "image", image, 3, "H, W, C")
    if 0 in image.shape:
        raise ValueError(f"{fn}: image must be non-empty; got shape {image.shape}.")
    _check_unit_range(fn, "image", image)
    channels = image.shape[-1]
    if kind == "structural":
        if other_image is None:
            raise ValueError(f"{fn}: kind='structural' needs other_image.")
        other_image = _checks.as_float_array(fn, "other_image", other_image)
        if other_image.shape != image.shape:
            raise ValueError(
                f"{fn}: other_image must have the shape of image {image.shape}; got "
                f"{other_image.shape}."
            )
        _check_unit_range(fn, "other_image", other_image)
    elif other_image is not None:
        raise ValueError(f"{fn}: other_image is only used with kind='structural'.")
    sources = jnp.asarray(mask_source)
    if sources.dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: mask_source must be a bool array; got dtype {sources.dtype}."
        )
    if sources.ndim not in (2, 3) or sources.size == 0:
        raise ValueError(
            f"{fn}: mask_source must be (h, w) or (N, h, w) and non-empty; got shape "
            f"{tuple(sources.shape)}."
        )
    if _checks.is_concrete(sources) and not bool(np.any(np.asarray(sources))):
        raise ValueError(f"{fn}: mask_source has no True pixel.")
    sources = sources.reshape((-1,) + sources.shape[-2:])
    _check_pair(fn, "scale_range", scale_range)
    _check_scalar(fn, "max_angle", max_angle, low=0.0, open_low=False)
    _check_scalar(fn, "factor", factor, low=0.0, high=1.0, open_high=True)
    bound = None
    if _checks.is_concrete(factor):
        bound = _max_min_distance(float(np.asarray(factor)), channels)
    if min_distance is None:
        min_distance = (
            _DEFAULT_MIN_DISTANCE
            if bound is None
            else min(_DEFAULT_MIN_DISTANCE, bound)
        )
    _check_scalar(fn, "min_distance", min_distance, low=0.0, high=bound)

    return _cut_paste(
        key,
        image,
        sources,
        other_image,
        tuple(jnp.asarray(v, jnp.float32) for v in scale_range),
        jnp.asarray(max_angle, jnp.float32),
        jnp.asarray(min_distance, image.dtype),
        jnp.asarray(factor, image.dtype),
        kind=kind,
        region=region,
    )


@functools.partial(jax.jit, static_argnames=("kind", "region"))
def _cut_paste(
    key,
    image,
    sources,
    other,
    scale_range,
    max_angle,
    min_distance,
    factor,
    *,
    kind,
    region,
):
    """The kernel of :func:`cut_paste` (arguments validated)."""
    k_mask, k_anomaly = jax.random.split(key)
    mask, position = _place_mask(
        k_mask, sources, image.shape[:2], scale_range, max_angle
    )
    if kind == "color":
        colour = jax.random.uniform(k_anomaly, image.shape[-1:], image.dtype)
        anomaly = jnp.broadcast_to(colour, image.shape)
    else:
        anomaly = _structural_source(k_anomaly, other, position, region)
    anomaly = _push_away(anomaly, image, min_distance, factor)
    # F2PAD eq. 16, exact outside the mask
    out = jnp.where(mask[..., None], anomaly, image)
    return CutPasteResult(image=out.astype(image.dtype), mask=mask)


def _check_unit_range(fn, name, x):
    if _checks.is_concrete(x):
        values = np.asarray(x)
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{fn}: {name} values must lie in [0, 1].")


def _check_scalar(fn, name, value, *, low, high=None, open_low=True, open_high=False):
    """Checks a scalar option against ``low < value (<=) high`` when concrete."""
    if isinstance(value, (str, bytes)) or value is None or jnp.ndim(value) != 0:
        raise ValueError(f"{fn}: {name} must be a scalar; got {value!r}.")
    if not _checks.is_concrete(value):
        return
    v = float(np.asarray(value))
    bad = not np.isfinite(v) or (v <= low if open_low else v < low)
    if high is not None:
        bad = bad or (v >= high if open_high else v > high)
    if bad:
        lo = f"{low:.4g} {'<' if open_low else '<='} "
        hi = "" if high is None else f" {'<' if open_high else '<='} {high:.4g}"
        raise ValueError(f"{fn}: {name} must satisfy {lo}{name}{hi}; got {value!r}.")


def random_defect_mask(
    key: jax.Array, shape: Sequence[int], *, kind: Shape = "blob"
) -> jax.Array:
    """Draws one random defect-shaped mask, a mask source for :func:`cut_paste`.

    For data sets without ground-truth masks to borrow (F2PAD takes MVTec AD's): an
    ``"ellipse"`` (semi-axes 8-30% of the shorter side, any orientation), a ``"blob"``
    (smooth Gaussian noise under a Gaussian window, thresholded at a random fraction
    of its maximum: irregular, sometimes in a few pieces) or a ``"scratch"`` (a bent
    line, a quadratic Bézier curve 1-3 pixels wide and 30-80% of the shorter side
    long).

    Args:
      key: PRNG key.
      shape: (h, w) static ints >= 4.
      kind: ``"ellipse"``, ``"blob"`` or ``"scratch"``.

    Returns:
      (h, w) bool mask, never empty (it contains the shape's centre or start pixel).

    Raises:
      ValueError: bad ``shape`` or unknown ``kind``.
      TypeError: non-int ``shape``, ``key`` not a PRNG key.

    Example:
      >>> import jax
      >>> from jad.data.cutpaste import random_defect_mask
      >>> m = random_defect_mask(jax.random.key(0), (32, 32), kind="ellipse")
      >>> m.shape, m.dtype.name, bool(m.any())
      ((32, 32), 'bool', True)
    """
    fn = "random_defect_mask"
    _checks.check_key(fn, "key", key)
    _checks.check_choice(fn, "kind", kind, _SHAPES)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ValueError(f"{fn}: shape must be a pair (h, w); got {shape!r}.")
    if len(shape) != 2:
        raise ValueError(f"{fn}: shape must be a pair (h, w); got {shape!r}.")
    h = _checks.check_int(fn, "shape[0]", shape[0], low=4)
    w = _checks.check_int(fn, "shape[1]", shape[1], low=4)
    return _random_defect_mask(key, shape=(h, w), kind=kind)


@functools.partial(jax.jit, static_argnames=("shape", "kind"))
def _random_defect_mask(key, *, shape, kind):
    """The kernel of :func:`random_defect_mask` (arguments validated)."""
    h, w = shape
    side = float(min(h, w))
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32),
        jnp.arange(w, dtype=jnp.float32),
        indexing="ij",
    )
    keys = jax.random.split(key, 6)
    # An integer centre in the middle half, so the mask contains it and rarely touches
    # the border of the source.
    centre_y = jax.random.randint(keys[0], (), h // 4, h - h // 4).astype(jnp.float32)
    centre_x = jax.random.randint(keys[1], (), w // 4, w - w // 4).astype(jnp.float32)
    dy, dx = rows - centre_y, cols - centre_x
    angle = jax.random.uniform(keys[2], (), jnp.float32, 0.0, jnp.pi)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    if kind == "ellipse":
        axes = jax.random.uniform(keys[3], (2,), jnp.float32, 0.08, 0.3) * side
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0
    if kind == "blob":
        noise = jax.random.normal(keys[3], (h, w), jnp.float32)
        field = gaussian_blur(noise, side / 10.0, mode="wrap")
        field = field / jnp.maximum(jnp.std(field), 1e-12)
        spread = jax.random.uniform(keys[4], (), jnp.float32, 0.1, 0.2) * side
        g = field - (dy**2 + dx**2) / (2.0 * spread**2)  # log of noise x window
        fraction = jax.random.uniform(keys[5], (), jnp.float32, 0.5, 1.5)
        # g >= max - fraction, i.e. exp(g) >= exp(-fraction) max exp(g): never empty.
        return g >= jnp.max(g) - fraction
    # Scratch: a quadratic Bézier from the centre, sampled at 33 points.
    length = jax.random.uniform(keys[3], (), jnp.float32, 0.3, 0.8) * side
    bend = jax.random.uniform(keys[4], (), jnp.float32, -0.25, 0.25) * length
    half_width = jax.random.uniform(keys[5], (), jnp.float32, 0.5, 1.5)
    t = jnp.linspace(0.0, 1.0, 33)
    direction = jnp.stack([sin, cos])  # (y, x)
    normal = jnp.stack([cos, -sin])
    start = jnp.stack([centre_y, centre_x])
    control = start + 0.5 * length * direction + bend * normal
    end = start + length * direction
    curve = (
        ((1 - t) ** 2)[:, None] * start
        + (2 * t * (1 - t))[:, None] * control
        + (t**2)[:, None] * end
    )
    a, b = curve[:-1], curve[1:]  # (32, 2) segments
    pixels = jnp.stack([rows, cols], axis=-1)[..., None, :]  # (h, w, 1, 2)
    ab = b - a
    s = jnp.sum((pixels - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-12)
    nearest = a + jnp.clip(s, 0.0, 1.0)[..., None] * ab
    distance = jnp.min(jnp.sqrt(jnp.sum((pixels - nearest) ** 2, -1)), axis=-1)
    return distance <= half_width
