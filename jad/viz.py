"""Pictures of results: anomaly heat-map overlays (PNG) and PRO curve plots.

Overlays need only numpy and Pillow (a core dependency): the colour map is a table
computed here (matplotlib's ``jet``, the map used in anomaly detection papers, or any
(256, 3) uint8 table you pass), and the optional colour bar beside an overlay is drawn
with Pillow (its default font for the labels). PRO curve plots use matplotlib,
imported when called (``pip install matplotlib``).

Conventions: ``image`` is displayable, (H, W, 3) or (H, W) or (H, W, 1), uint8 or
float in [0, 1] (undo ImageNet normalisation first); ``anomaly_map`` is (H, W) float at
the image's resolution (upsample it first); ``mask`` is (H, W) bool or 0/1 ground
truth. Outputs are (H, W, 3) uint8 RGB arrays and PNG files.
"""

from __future__ import annotations

import collections.abc
import os
import pathlib

import jax
import numpy as np

from jad import _checks, metrics

__all__ = ["colorbar", "colorize", "jet", "overlay", "save_overlay", "save_pro_curve"]

# matplotlib's "jet" as (x, value) anchors per channel (its _jet_data), so the table
# below equals matplotlib.colormaps["jet"] to within one level.
_JET_ANCHORS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def jet(*, levels: int = 256) -> np.ndarray:
    """The ``jet`` colour map as a lookup table (matplotlib's, computed in numpy).

    Args:
      levels: number of entries n, >= 2 (matplotlib uses 256).

    Returns:
      (n, 3) uint8 RGB table; entry i colours normalised values in [i / n,
      (i + 1) / n), as matplotlib's ``jet`` (``resampled(n)``) with ``bytes=True``.

    Example:
      >>> from jad.viz import jet
      >>> jet()[[0, -1]].tolist()
      [[0, 0, 127], [127, 0, 0]]
    """
    levels = _checks.check_int("jet", "levels", levels, low=2)
    x = np.linspace(0.0, 1.0, levels)
    channels = [
        np.interp(x, [a for a, _ in anchors], [v for _, v in anchors])
        for anchors in _JET_ANCHORS
    ]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _colormap_table(fn: str, colormap) -> np.ndarray:
    if isinstance(colormap, str):
        if colormap != "jet":
            raise ValueError(
                f"{fn}: colormap must be 'jet' or a (256, 3) uint8 table; got "
                f"{colormap!r}."
            )
        return jet()
    table = np.asarray(colormap)
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 2:
        raise ValueError(
            f"{fn}: colormap table must be (n, 3) with n >= 2; got {table.shape}."
        )
    if table.dtype != np.uint8:
        raise TypeError(f"{fn}: colormap table must be uint8; got {table.dtype}.")
    return table


def _map(fn: str, anomaly_map) -> np.ndarray:
    anomaly_map = metrics.as_scores(fn, "anomaly_map", anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(
            f"{fn}: anomaly_map must be (H, W); got shape {anomaly_map.shape}."
        )
    return anomaly_map


def colorize(
    anomaly_map: jax.typing.ArrayLike,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    colormap: str | np.ndarray = "jet",
) -> np.ndarray:
    """Colours an anomaly map with a colour map.

    Values are normalised to [0, 1] with ``(x - vmin) / (vmax - vmin)``, clipped, and
    looked up in the table (n entries: index ``floor(x n)``, the last for 1).

    Args:
      anomaly_map: (H, W) float anomaly map; numpy or JAX.
      vmin: value shown as the bottom colour; default the map's minimum. Fix
        ``vmin``/``vmax`` across images to compare them.
      vmax: value shown as the top colour; default the map's maximum.
      colormap: ``"jet"`` or an (n, 3) uint8 RGB table.

    Returns:
      (H, W, 3) uint8 RGB heat map. A constant map (``vmax == vmin``) gets the
      bottom colour.

    Raises:
      ValueError: bad shapes, NaN or inf, ``vmin > vmax``, unknown ``colormap``.
      TypeError: non-floating ``anomaly_map``, non-uint8 table.

    Example:
      >>> import numpy as np
      >>> from jad.viz import colorize
      >>> colorize(np.array([[0.0, 1.0]])).tolist()
      [[[0, 0, 127], [127, 0, 0]]]
    """
    fn = "colorize"
    anomaly_map = _map(fn, anomaly_map)
    table = _colormap_table(fn, colormap)
    return _colorize(fn, anomaly_map, vmin, vmax, table)


def _scale(fn, anomaly_map, vmin, vmax) -> tuple[float, float]:
    """The colour scale's ends: ``vmin``/``vmax``, defaulting to the map's range."""
    lo = float(anomaly_map.min()) if vmin is None else float(vmin)
    hi = float(anomaly_map.max()) if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"{fn}: vmin and vmax must be finite with vmin <= vmax; got {lo}, {hi}."
        )
    return lo, hi


def _colorize(fn, anomaly_map, vmin, vmax, table) -> np.ndarray:
    lo, hi = _scale(fn, anomaly_map, vmin, vmax)
    scaled = (anomaly_map.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    n = table.shape[0]
    index = np.clip(np.floor(scaled * n), 0, n - 1).astype(np.intp)
    return table[index]


def _colorbar_layout(height: int) -> tuple[int, int, int, int]:
    """(pad, bar width, gap, font size) of a colour bar panel ``height`` rows high."""
    return (
        max(1, height // 32),
        max(6, height // 16),
        max(2, height // 64),
        min(20, max(9, height // 12 + 5)),
    )


def _colorbar(height: int, lo: float, hi: float, table: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    pad, bar_width, gap, font_size = _colorbar_layout(height)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    labels = (f"{hi:.4g}", f"{lo:.4g}")
    boxes = [font.getbbox(text) for text in labels]  # (left, top, right, bottom)
    text_left = gap + bar_width + gap
    width = text_left + max(box[2] for box in boxes) + gap
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    # the max level with the bar's top, the min level with its bottom
    draw.text((text_left, pad - boxes[0][1]), labels[0], fill=(0, 0, 0), font=font)
    draw.text(
        (text_left, height - pad - boxes[1][3]), labels[1], fill=(0, 0, 0), font=font
    )
    out = np.array(panel)
    n = height - 2 * pad
    centres = hi - (np.arange(n) + 0.5) / n * (hi - lo)  # top row: near vmax
    out[pad : height - pad, gap : gap + bar_width] = _colorize(
        "colorbar", centres[:, None], lo, hi, table
    )
    return out


def colorbar(
    height: int,
    *,
    vmin: float,
    vmax: float,
    colormap: str | np.ndarray = "jet",
) -> np.ndarray:
    """A vertical colour bar labelled with its scale's ends, to stand beside a map.

    A white panel ``height`` rows high. On its left a bar runs from the colour of
    ``vmax`` at the top to that of ``vmin`` at the bottom: with n bar rows, row r
    shows ``vmax - (r + 0.5) (vmax - vmin) / n`` coloured as :func:`colorize` does
    with this ``vmin`` and ``vmax``. Right of the bar, ``vmax`` is printed level with
    its top and ``vmin`` level with its bottom (4 significant digits, black, Pillow's
    default font at a size that grows with ``height``). The bar leaves a margin of
    ``max(1, height // 32)`` rows above and below, and is ``max(6, height // 16)``
    columns wide.

    Args:
      height: rows H of the panel (the overlay's height), >= 8.
      vmin: value at the bottom of the bar.
      vmax: value at the top of the bar, >= ``vmin`` (equal: the whole bar has the
        bottom colour, as :func:`colorize` draws a constant map).
      colormap: ``"jet"`` or an (n, 3) uint8 RGB table.

    Returns:
      (H, w, 3) uint8 RGB panel; w depends on H and on the labels' width.

    Raises:
      ValueError: ``height`` < 8, ``vmin``/``vmax`` not finite or ``vmin > vmax``,
        unknown ``colormap``.
      TypeError: non-int ``height``, non-uint8 table.

    Example:
      >>> from jad.viz import colorbar
      >>> panel = colorbar(64, vmin=0.0, vmax=1.0)
      >>> panel.shape[0], panel.dtype
      (64, dtype('uint8'))
      >>> panel[2, 2].tolist(), panel[61, 2].tolist()  # the bar's top and bottom
      ([136, 0, 0], [0, 0, 136])
    """
    fn = "colorbar"
    height = _checks.check_int(fn, "height", height, low=8)
    table = _colormap_table(fn, colormap)
    lo, hi = _scale(fn, np.zeros(1), vmin, vmax)
    return _colorbar(height, lo, hi, table)


def _image(fn: str, image, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float64 in [0, 255] from a uint8 or [0, 1] float image."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"{fn}: image must be (H, W, 3), (H, W, 1) or (H, W); got shape "
            f"{image.shape}."
        )
    if image.shape[:2] != shape:
        raise ValueError(
            f"{fn}: image (H, W) = {image.shape[:2]} must match anomaly_map "
            f"{shape}; resize the map to the image first."
        )
    if image.dtype == np.uint8:
        image = image.astype(np.float64)
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
        # Resampling overshoot is clipped; ImageNet-normalised images (about -2.1 to
        # 2.6) are refused.
        tol = 0.25
        if image.size and (image.min() < -tol or image.max() > 1.0 + tol):
            raise ValueError(
                f"{fn}: a float image must be in [0, 1]; got values in "
                f"[{image.min():.3g}, {image.max():.3g}] (undo the ImageNet "
                "normalisation first)."
            )
        image = np.clip(image, 0.0, 1.0) * 255.0
    else:
        raise TypeError(f"{fn}: image must be uint8 or float; got {image.dtype}.")
    return np.broadcast_to(image, (*shape, 3))


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary of ``mask``, grown to ``width`` pixels.

    Boundary pixels are mask pixels with a 4-neighbour outside the mask or the image;
    each extra unit of width adds their 4-neighbours (inside and outside the mask).
    """
    padded = np.pad(mask, 1)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    edge = mask & ~interior
    for _ in range(width - 1):
        p = np.pad(edge, 1)
        edge = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return edge


def overlay(
    image: jax.typing.ArrayLike,
    anomaly_map: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    colormap: str | np.ndarray = "jet",
    contour_color: collections.abc.Sequence[int] = (255, 255, 255),
    contour_width: int = 1,
    colorbar: bool = False,
) -> np.ndarray:
    """Blends an anomaly heat map over an image and draws the ground-truth contour.

    ``out = (1 - alpha) image + alpha colorize(anomaly_map)``, rounded to uint8; then
    the pixels on the boundary of ``mask`` (mask pixels with a 4-neighbour outside the
    mask or the image) are painted ``contour_color``. With ``colorbar``, the
    :func:`colorbar` of the scale used (``vmin`` and ``vmax``, or the map's range)
    is appended on the right.

    Args:
      image: (H, W, 3), (H, W, 1) or (H, W) uint8, or float in [0, 1] (values up to
        0.25 outside, e.g. bicubic overshoot, are clipped).
      anomaly_map: (H, W) float, at the image's resolution.
      mask: optional (H, W) bool or 0/1 ground truth whose contour is drawn.
      vmin: value shown as the bottom colour (default: the map's minimum).
      vmax: value shown as the top colour (default: the map's maximum).
      alpha: weight of the heat map, in [0, 1].
      colormap: ``"jet"`` or an (n, 3) uint8 RGB table.
      contour_color: RGB of the contour, three ints in [0, 255].
      contour_width: contour thickness in pixels, >= 1.
      colorbar: append a labelled colour bar (:func:`colorbar`) on the right.

    Returns:
      (H, W, 3) uint8 RGB image; (H, W + w, 3) with ``colorbar``.

    Raises:
      ValueError: shapes that do not match, a float image outside [0, 1], NaN or inf
        in the map, bad ``alpha``/``vmin``/``vmax``/``contour_width``/``colormap``,
        a mask that is not binary.
      TypeError: wrong dtypes.

    Example:
      >>> import numpy as np
      >>> from jad.viz import overlay
      >>> mask = np.zeros((8, 8), bool)
      >>> mask[2:6, 2:6] = True
      >>> rgb = overlay(np.zeros((8, 8, 3), np.uint8), np.random.rand(8, 8), mask=mask)
      >>> rgb.shape, rgb.dtype, rgb[2, 3].tolist()
      ((8, 8, 3), dtype('uint8'), [255, 255, 255])
    """
    fn = "overlay"
    return _overlay(
        fn,
        image,
        anomaly_map,
        mask,
        vmin,
        vmax,
        alpha,
        colormap,
        contour_color,
        contour_width,
        colorbar,
    )


def _overlay(
    fn, image, anomaly_map, mask, vmin, vmax, alpha, colormap, color, width, bar
) -> np.ndarray:
    anomaly_map = _map(fn, anomaly_map)
    table = _colormap_table(fn, colormap)
    image = _image(fn, image, anomaly_map.shape)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"{fn}: alpha must be a float in [0, 1]; got {alpha!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1]; got {alpha}.")
    color = np.asarray(color)
    if color.shape != (3,) or not np.all((color >= 0) & (color <= 255)):
        raise ValueError(
            f"{fn}: contour_color must be three ints in [0, 255]; got {color.tolist()}."
        )
    heat = _colorize(fn, anomaly_map, vmin, vmax, table)
    out = np.rint((1.0 - alpha) * image + alpha * heat).astype(np.uint8)
    width = _checks.check_int(fn, "contour_width", width, low=1)
    if mask is not None:
        mask = metrics.as_binary(fn, "mask", mask)
        if mask.shape != anomaly_map.shape:
            raise ValueError(
                f"{fn}: mask must be (H, W) = {anomaly_map.shape} like anomaly_map; "
                f"got {mask.shape}."
            )
        out[_contour(mask, width)] = color.astype(np.uint8)
    if bar:
        lo, hi = _scale(fn, anomaly_map, vmin, vmax)
        out = np.concatenate([out, _colorbar(out.shape[0], lo, hi, table)], axis=1)
    return out


def save_overlay(
    path: str | os.PathLike,
    image: jax.typing.ArrayLike,
    anomaly_map: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    colormap: str | np.ndarray = "jet",
    contour_color: collections.abc.Sequence[int] = (255, 255, 255),
    contour_width: int = 1,
    colorbar: bool = False,
) -> pathlib.Path:
    """Writes :func:`overlay` of an image, its anomaly map and its mask as a PNG.

    Args:
      path: file to write (PNG whatever the suffix); missing folders are created.
      image: (H, W, 3), (H, W, 1) or (H, W) uint8, or float in [0, 1].
      anomaly_map: (H, W) float, at the image's resolution.
      mask: optional (H, W) bool or 0/1 ground truth whose contour is drawn.
      vmin: value shown as the bottom colour (default: the map's minimum).
      vmax: value shown as the top colour (default: the map's maximum).
      alpha: weight of the heat map, in [0, 1].
      colormap: ``"jet"`` or an (n, 3) uint8 RGB table.
      contour_color: RGB of the contour, three ints in [0, 255].
      contour_width: contour thickness in pixels, >= 1.
      colorbar: append a labelled colour bar (:func:`colorbar`) on the right.

    Returns:
      The written file's path.

    Raises:
      ValueError: as :func:`overlay`.
      TypeError: as :func:`overlay`.

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from jad.viz import save_overlay
      >>> out = os.path.join(tempfile.mkdtemp(), "overlay.png")
      >>> save_overlay(out, np.zeros((8, 8)), np.random.rand(8, 8)).name
      'overlay.png'
    """
    from PIL import Image

    rgb = _overlay(
        "save_overlay",
        image,
        anomaly_map,
        mask,
        vmin,
        vmax,
        alpha,
        colormap,
        contour_color,
        contour_width,
        colorbar,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def _plot_points(curve: metrics.PROCurve, max_fpr: float, max_points: int = 4096):
    """Curve points up to max_fpr (the end interpolated), thinned for plotting."""
    fpr, values = np.asarray(curve.fpr), np.asarray(curve.pro)
    i = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[:i], values[:i]
    if x[-1] < max_fpr:
        x = np.append(x, max_fpr)
        y = np.append(y, np.interp(max_fpr, fpr[i - 1 : i + 1], values[i - 1 : i + 1]))
    if x.size > max_points:  # keep the top of each vertical step
        grid = np.linspace(0.0, max_fpr, max_points)
        keep = np.unique(np.searchsorted(x, grid, side="right") - 1)
        x, y = x[keep], y[keep]
    return x, y


def save_pro_curve(
    path: str | os.PathLike,
    curves: metrics.PROCurve | collections.abc.Mapping[str, metrics.PROCurve],
    *,
    max_fpr: float = 0.3,
    title: str | None = None,
) -> pathlib.Path:
    """Plots PRO curves up to ``max_fpr`` and writes the figure (PNG, PDF, SVG...).

    Each curve is drawn from FPR 0 to ``max_fpr`` (PRO interpolated at the limit, as
    in :func:`jad.metrics.pro_area`) and labelled with its AUPRO.

    Args:
      path: file to write; the suffix picks the format (matplotlib); missing folders
        are created.
      curves: one :class:`jad.metrics.PROCurve` or a mapping name -> curve (e.g.
        methods or categories), from :func:`jad.metrics.pro_curve` computed with a
        ``max_fpr`` at least this one.
      max_fpr: float in (0, 1], the right end of the FPR axis.
      title: optional figure title.

    Returns:
      The written file's path.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: a curve that ends before ``max_fpr``, ``max_fpr`` outside (0, 1].
      TypeError: ``curves`` is not a PROCurve or a mapping of them, ``max_fpr``
        is not a real number.

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from jad.metrics import pro_curve
      >>> from jad.viz import save_pro_curve
      >>> masks = np.zeros((2, 8, 8), bool)
      >>> masks[0, 2:4, 2:4] = True
      >>> curve = pro_curve(np.random.rand(2, 8, 8), masks)
      >>> out = os.path.join(tempfile.mkdtemp(), "pro.png")
      >>> save_pro_curve(out, curve).name
      'pro.png'
    """
    fn = "save_pro_curve"
    _checks.check_real_scalar(fn, "max_fpr", max_fpr)
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:  # NaN fails too
        raise ValueError(f"{fn}: max_fpr must be in (0, 1]; got {max_fpr}.")
    if isinstance(curves, metrics.PROCurve):
        curves = {"": curves}
    if not isinstance(curves, collections.abc.Mapping) or not all(
        isinstance(c, metrics.PROCurve) for c in curves.values()
    ):
        raise TypeError(
            f"{fn}: curves must be a PROCurve or a mapping name -> PROCurve; got "
            f"{type(curves).__name__}."
        )
    areas = {name: metrics.pro_area(c, max_fpr=max_fpr) for name, c in curves.items()}
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"{fn} needs matplotlib: pip install matplotlib (or jad[test])."
        ) from err
    figure = Figure(figsize=(4.5, 4.0), layout="constrained")
    axes = figure.add_subplot()
    for name, curve in curves.items():
        x, y = _plot_points(curve, max_fpr)
        label = f"{name} ({areas[name]:.3f})" if name else f"AUPRO {areas[name]:.3f}"
        axes.plot(x, y, label=label)
    axes.set(xlim=(0.0, max_fpr), ylim=(0.0, 1.0), xlabel="FPR (normal pixels)")
    axes.set_ylabel("PRO (per-region overlap)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    if title:
        axes.set_title(title)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
