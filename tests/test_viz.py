"""Tests of jad.viz: overlays and colour bars (numpy + Pillow), PRO curve plots
(matplotlib)."""

from __future__ import annotations

import ast
import doctest
import inspect
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jad import metrics, viz


def _scene(size=16):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    anomaly_map = rng.random((size, size))
    mask = np.zeros((size, size), bool)
    mask[4:10, 5:12] = True
    return image, anomaly_map, mask


def test_jet_table_matches_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    x = np.concatenate([np.linspace(0, 1, 1001), [0.0, 1.0, 0.5]])
    expected = matplotlib.colormaps["jet"](x, bytes=True)[..., :3]
    np.testing.assert_array_equal(viz.colorize(x[None, :])[0], expected)
    small = matplotlib.colormaps["jet"].resampled(16)(x, bytes=True)[..., :3]
    got = viz.colorize(x[None, :], colormap=viz.jet(levels=16))[0]
    np.testing.assert_array_equal(got, small)


def test_colorize_normalisation_and_custom_table():
    table = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    amap = np.array([[0.0, 0.49, 0.5, 2.0]])
    got = viz.colorize(amap, vmin=0.0, vmax=1.0, colormap=table)[0, :, 0]
    np.testing.assert_array_equal(got, [0, 0, 255, 255])  # clipped above vmax
    constant = viz.colorize(np.full((2, 2), 3.0))
    np.testing.assert_array_equal(constant, np.broadcast_to(viz.jet()[0], (2, 2, 3)))


def test_overlay_shape_dtype_blend_and_contour():
    image, amap, mask = _scene()
    out = viz.overlay(image, amap, mask=mask, alpha=0.25, contour_color=(0, 255, 0))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # contour = mask minus its 4-neighbour erosion (scipy as the reference)
    edge = mask & ~ndimage.binary_erosion(mask)
    assert np.all(out[edge] == [0, 255, 0])
    heat = viz.colorize(amap).astype(float)
    blend = np.rint(0.75 * image + 0.25 * heat).astype(np.uint8)
    np.testing.assert_array_equal(out[~edge], blend[~edge])
    # no mask: just the blend; alpha 0 and 1 give the image and the heat map
    np.testing.assert_array_equal(viz.overlay(image, amap, alpha=0.25), blend)
    np.testing.assert_array_equal(viz.overlay(image, amap, alpha=0.0), image)
    np.testing.assert_array_equal(viz.overlay(image, amap, alpha=1.0), heat)


def test_overlay_contour_width_and_image_border():
    image, amap, _ = _scene(8)
    mask = np.zeros((8, 8), bool)
    mask[:3, :3] = True  # touches the image border: that side is drawn too
    out = viz.overlay(image, amap, mask=mask, contour_color=(1, 2, 3))
    drawn = np.all(out == [1, 2, 3], axis=-1)
    expected = np.zeros((8, 8), bool)
    expected[:3, :3] = True
    expected[1, 1] = False  # the only pixel with its 4 neighbours in the mask
    np.testing.assert_array_equal(drawn, expected)
    thick = viz.overlay(
        image, amap, mask=mask, contour_color=(1, 2, 3), contour_width=2
    )
    drawn_thick = np.all(thick == [1, 2, 3], axis=-1)
    assert drawn_thick.sum() > drawn.sum() and np.all(drawn_thick[drawn])


def test_overlay_accepts_gray_float_and_jax_inputs():
    image, amap, mask = _scene()
    gray = image[..., 0]
    expected = viz.overlay(np.repeat(gray[..., None], 3, -1), amap, mask=mask)
    np.testing.assert_array_equal(viz.overlay(gray, amap, mask=mask), expected)
    np.testing.assert_array_equal(
        viz.overlay(gray[..., None], amap, mask=mask), expected
    )
    as_float = viz.overlay(gray / 255.0, jnp.asarray(amap), mask=jnp.asarray(mask))
    assert np.abs(as_float.astype(int) - expected).max() <= 1
    # overshoot of a resize is clipped
    overshoot = np.clip(gray / 255.0 * 1.2 - 0.1, -0.1, 1.1)
    clipped = viz.overlay(np.clip(overshoot, 0, 1), amap, mask=mask)
    np.testing.assert_array_equal(viz.overlay(overshoot, amap, mask=mask), clipped)


def test_save_overlay_writes_a_png(tmp_path):
    image, amap, mask = _scene()
    path = viz.save_overlay(
        tmp_path / "sub" / "x.png", image, amap, mask=mask, vmax=2.0
    )
    assert path.exists()
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (16, 16)
        np.testing.assert_array_equal(
            np.asarray(png), viz.overlay(image, amap, mask=mask, vmax=2.0)
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"anomaly_map": np.zeros((8, 9))}, ValueError, "resize the map"),
        ({"mask": np.zeros((8, 9), bool)}, ValueError, "mask"),
        ({"mask": np.full((16, 16), 255, np.uint8)}, ValueError, "mask > 0"),
        ({"image": np.zeros((16, 16, 2))}, ValueError, "image"),
        ({"image": np.full((16, 16, 3), 2.5)}, ValueError, "ImageNet"),
        ({"image": np.zeros((16, 16, 3), np.int32)}, TypeError, "image"),
        ({"anomaly_map": np.zeros((16, 16), np.int32)}, TypeError, "anomaly_map"),
        ({"anomaly_map": np.full((16, 16), np.nan)}, ValueError, "NaN"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"vmin": 2.0, "vmax": 1.0}, ValueError, "vmin"),
        ({"colormap": "viridis"}, ValueError, "colormap"),
        ({"colormap": np.zeros((4, 3))}, TypeError, "uint8"),
        ({"contour_color": (0, 0, 300)}, ValueError, "contour_color"),
        ({"contour_width": 0}, ValueError, "contour_width"),
    ],
)
def test_overlay_bad_input(kwargs, error, match):
    image, amap, mask = _scene()
    args = {"image": image, "anomaly_map": amap, "mask": mask} | kwargs
    with pytest.raises(error, match=match):
        viz.overlay(**args)


def _jet_levels(pixels: np.ndarray) -> np.ndarray:
    """Index in viz.jet() of each RGB pixel of an (n, 3) array (-1: not an entry)."""
    lookup = {tuple(c): i for i, c in enumerate(viz.jet().tolist())}
    return np.array([lookup.get(tuple(p), -1) for p in pixels.tolist()])


@pytest.mark.parametrize("height", [16, 64, 257])
def test_colorbar_runs_monotonically_from_vmax_to_vmin(height):
    vmin, vmax = -0.5, 2.0
    panel = viz.colorbar(height, vmin=vmin, vmax=vmax)
    assert panel.dtype == np.uint8 and panel.shape[0] == height
    assert panel.shape[1] > 8 and panel.shape[2] == 3
    pad, width = max(1, height // 32), max(6, height // 16)
    gap = max(2, height // 64)
    bar = panel[pad : height - pad, gap : gap + width]
    for column in range(width):
        # every bar pixel is a colour of the map (jet repeats a few colours: the
        # last index of each is taken, which keeps the order)
        levels = _jet_levels(bar[:, column])
        assert np.all(levels >= 0)
        assert np.all(np.diff(levels) <= 0)  # vmax at the top, down to vmin
        # row r shows the value at its centre: colorize's index of it
        n = height - 2 * pad
        centres = vmax - (np.arange(n) + 0.5) / n * (vmax - vmin)
        expected = np.floor((centres - vmin) / (vmax - vmin) * 256).astype(int)
        np.testing.assert_array_equal(bar[:, column], viz.jet()[expected])
    # white around the bar, and dark label text right of it at the top and bottom
    assert np.all(panel[:pad] == 255) and np.all(panel[:, :gap] == 255)
    text = panel[:, gap + width :].min(axis=-1) < 128
    assert text[: height // 2].any() and text[height // 2 :].any()


def test_colorbar_labels_follow_the_scale_and_constant_scale():
    a = viz.colorbar(64, vmin=0.0, vmax=1.0)
    b = viz.colorbar(64, vmin=0.0, vmax=7.0)
    width = a.shape[1]
    assert not np.array_equal(a[:32], b[:32, :width])  # "1" vs "7" at the top
    np.testing.assert_array_equal(a[32:, :8], b[32:, :8])  # the bar's colours
    flat = viz.colorbar(64, vmin=3.0, vmax=3.0)  # bottom colour, as colorize
    bar = flat[2:62, 2:8].reshape(-1, 3)
    np.testing.assert_array_equal(bar, np.broadcast_to(viz.jet()[0], bar.shape))


def test_overlay_with_colorbar_appends_the_bar_of_its_scale(tmp_path):
    image, amap, mask = _scene(32)
    plain = viz.overlay(image, amap, mask=mask)
    out = viz.overlay(image, amap, mask=mask, colorbar=True)
    np.testing.assert_array_equal(out[:, :32], plain)
    np.testing.assert_array_equal(
        out[:, 32:], viz.colorbar(32, vmin=amap.min(), vmax=amap.max())
    )
    fixed = viz.overlay(image, amap, vmin=-1.0, vmax=4.0, colorbar=True)
    np.testing.assert_array_equal(fixed[:, 32:], viz.colorbar(32, vmin=-1.0, vmax=4.0))
    path = viz.save_overlay(tmp_path / "bar.png", image, amap, mask=mask, colorbar=True)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), out)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"height": 4}, ValueError, "height"),
        ({"height": 16.0}, TypeError, "height"),
        ({"vmin": 2.0, "vmax": 1.0}, ValueError, "vmin"),
        ({"vmax": np.inf}, ValueError, "finite"),
        ({"colormap": "viridis"}, ValueError, "colormap"),
    ],
)
def test_colorbar_bad_input(kwargs, error, match):
    args = {"height": 16, "vmin": 0.0, "vmax": 1.0} | kwargs
    with pytest.raises(error, match=match):
        viz.colorbar(**args)


def test_save_pro_curve_writes_a_figure(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 3:7] = masks[2, 8:11, 1:3] = True
    maps = rng.random(masks.shape) + masks
    curve = metrics.pro_curve(maps, masks)
    path = viz.save_pro_curve(tmp_path / "pro.png", {"a": curve, "b": curve})
    with Image.open(path) as png:
        assert png.format == "PNG"
    assert viz.save_pro_curve(tmp_path / "pro.svg", curve, title="t").stat().st_size
    short = metrics.pro_curve(maps, masks, max_fpr=0.1)
    with pytest.raises(ValueError, match="max_fpr"):
        viz.save_pro_curve(tmp_path / "bad.png", short, max_fpr=0.3)
    with pytest.raises(TypeError, match="curves"):
        viz.save_pro_curve(tmp_path / "bad.png", [curve])


def test_plot_points_are_thinned_and_end_at_the_limit():
    fpr = np.linspace(0, 1, 100_001)
    curve = metrics.PROCurve(fpr, np.sqrt(fpr), -fpr)
    x, y = viz._plot_points(curve, 0.3)
    assert x.size <= 4096 and x[0] == 0.0 and x[-1] == pytest.approx(0.3)
    np.testing.assert_allclose(y, np.sqrt(x), atol=1e-6)


@pytest.mark.parametrize(
    "max_fpr, error",
    [(0.0, ValueError), (1.5, ValueError), (np.nan, ValueError), ("0.3", TypeError)],
)
def test_save_pro_curve_checks_max_fpr_before_plotting(tmp_path, max_fpr, error):
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    curve = metrics.pro_curve(np.random.default_rng(3).random((1, 6, 6)), masks)
    with pytest.raises(error, match="save_pro_curve: max_fpr"):
        viz.save_pro_curve(tmp_path / "x.png", curve, max_fpr=max_fpr)
    assert not (tmp_path / "x.png").exists()


def test_viz_uses_only_public_names_of_jad_metrics():
    tree = ast.parse(inspect.getsource(viz))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("jad.metrics")}
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "metrics"
    }
    assert {"as_scores", "as_binary", "PROCurve"} <= used <= set(metrics.__all__)


def test_save_pro_curve_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    curve = metrics.pro_curve(np.random.default_rng(2).random((1, 6, 6)), masks)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        viz.save_pro_curve(tmp_path / "x.png", curve)


def test_docstring_examples():
    failed, attempted = doctest.testmod(viz)
    assert attempted > 0
    assert failed == 0
