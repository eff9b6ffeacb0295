"""jad.ops: gaussian_blur, resize, binary morphology against scipy/skimage/torch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from jax.test_util import check_grads

from jad.ops import closing, dilate, erode, gaussian_blur, opening, resize

TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]

# jad mode -> scipy.ndimage mode (the vocabularies differ; see jad/ops/filters.py).
SCIPY_MODE = {
    "symmetric": "reflect",
    "reflect": "mirror",
    "edge": "nearest",
    "constant": "constant",
    "wrap": "wrap",
}


def scipy_blur(maps, sigma, mode="reflect", radius=None):
    maps = np.asarray(maps, np.float64)
    out = np.empty_like(maps)
    for index in np.ndindex(maps.shape[:-2]):
        out[index] = ndi.gaussian_filter(
            maps[index], sigma, mode=mode, radius=radius, truncate=4.0
        )
    return out


# ----------------------------------------------------------------------------- blur


@pytest.mark.parametrize("shape", [(64, 64), (40, 72)])
def test_gaussian_blur_matches_scipy_default_float64(rng, x64, shape):
    maps = rng.standard_normal((2,) + shape)
    out = gaussian_blur(jnp.asarray(maps), 4.0)
    assert out.dtype == jnp.float64
    # float64 against float64: rounding only.
    np.testing.assert_allclose(out, scipy_blur(maps, 4.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", list(SCIPY_MODE))
@pytest.mark.parametrize(
    "shape, sigma",
    [
        ((64, 64), 4.0),  # matrix path, the PatchCore/PaDiM setting
        ((10, 7), 4.0),  # radius 16 > H, W: repeated reflection
        ((80, 90), 0.5),  # radius 2, 5 taps: the shifted-slice path on both axes
        ((12, 100), 1.0),  # matrix along H, shifted slices along W
    ],
)
def test_gaussian_blur_modes_match_scipy(rng, x64, mode, shape, sigma):
    maps = rng.standard_normal(shape)
    out = gaussian_blur(jnp.asarray(maps), sigma, mode=mode)
    expected = scipy_blur(maps, sigma, mode=SCIPY_MODE[mode])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_gaussian_blur_float32_matches_scipy(rng):
    maps = rng.random((3, 48, 56)).astype(np.float32)
    out = gaussian_blur(maps, 4.0)
    assert out.dtype == jnp.float32
    # float32 accumulation of 33 taps over values in [0, 1].
    np.testing.assert_allclose(out, scipy_blur(maps, 4.0), rtol=0, atol=2e-6)


def test_gaussian_blur_explicit_radius_matches_scipy(rng, x64):
    maps = rng.standard_normal((30, 30))
    out = gaussian_blur(jnp.asarray(maps), 2.0, radius=3)
    np.testing.assert_allclose(out, scipy_blur(maps, 2.0, radius=3), atol=1e-12)


def test_gaussian_blur_reflect_matches_torch_reflect_padding(rng, x64):
    torch = pytest.importorskip("torch")
    maps = rng.standard_normal((2, 40, 36))
    sigma, radius = 4.0, 16
    x = np.arange(-radius, radius + 1)
    taps = np.exp(-(x**2) / (2 * sigma**2))
    taps /= taps.sum()
    t = torch.from_numpy(maps)[:, None]
    t = torch.nn.functional.pad(t, (radius,) * 4, mode="reflect")  # anomalib
    kernel = torch.from_numpy(np.outer(taps, taps))[None, None]
    expected = torch.nn.functional.conv2d(t, kernel)[:, 0].numpy()
    out = gaussian_blur(jnp.asarray(maps), sigma, mode="reflect")
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("shape", [(32, 32), (40, 200)])
def test_gaussian_blur_jit_and_vmap_equal_loop(rng, transform, shape):
    maps = jnp.asarray(rng.random((3, 2) + shape), jnp.float32)

    def blur(m):
        return gaussian_blur(m, 1.5, radius=6, mode="reflect")

    batched = transform(blur)(maps)
    vmapped = transform(jax.vmap(blur))(maps)
    looped = jnp.stack([blur(m) for m in maps])
    np.testing.assert_allclose(batched, looped, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vmapped, looped, rtol=0, atol=1e-6)


def test_gaussian_blur_traced_sigma_needs_radius(rng):
    maps = jnp.asarray(rng.random((16, 16)), jnp.float32)
    with pytest.raises(ValueError, match="gaussian_blur: radius must be given"):
        jax.jit(gaussian_blur)(maps, 2.0)
    out = jax.jit(gaussian_blur, static_argnames="radius")(maps, 2.0, radius=8)
    np.testing.assert_allclose(out, gaussian_blur(maps, 2.0), atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 9), (6, 40)])  # matrix path; shifted path on W
def test_gaussian_blur_gradients(rng, x64, shape):
    maps = jnp.asarray(rng.standard_normal(shape))
    check_grads(
        lambda m, s: gaussian_blur(m, s, radius=2, mode="symmetric"),
        (maps, jnp.asarray(1.3)),
        order=1,
        modes=["rev"],
    )


def test_gaussian_blur_preserves_constants_and_is_identity_at_radius_0(rng):
    np.testing.assert_allclose(gaussian_blur(jnp.full((9, 9), 3.0), 4.0), 3.0, 1e-6)
    maps = jnp.asarray(rng.random((5, 6)), jnp.float32)
    np.testing.assert_array_equal(gaussian_blur(maps, 0.1), maps)  # radius 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"maps": np.zeros(5), "sigma": 1.0}, ValueError, "maps must have at least 2"),
        ({"maps": np.zeros((4, 4), int), "sigma": 1.0}, TypeError, "maps"),
        ({"maps": np.zeros((4, 4)), "sigma": 0.0}, ValueError, "sigma must be"),
        ({"maps": np.zeros((4, 4)), "sigma": np.nan}, ValueError, "sigma must be"),
        ({"maps": np.zeros((4, 4)), "sigma": np.ones(2)}, ValueError, "sigma"),
        ({"maps": np.zeros((4, 4)), "sigma": "4"}, TypeError, "sigma"),
        ({"maps": np.zeros((4, 4)), "sigma": 1.0, "radius": -1}, ValueError, "radius"),
        ({"maps": np.zeros((4, 4)), "sigma": 1.0, "radius": 2.0}, TypeError, "radius"),
        (
            {"maps": np.zeros((4, 4)), "sigma": 1.0, "mode": "mirror"},
            ValueError,
            "mode",
        ),
    ],
)
def test_gaussian_blur_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussian_blur(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"maps": np.zeros((0, 4)), "sigma": 1.0}, ValueError, "maps must have H, W"),
        ({"maps": np.zeros((3, 4, 0)), "sigma": 1.0}, ValueError, "maps must have"),
        ({"maps": np.zeros((4, 4)), "sigma": 1e12}, ValueError, "sigma must be at"),
        (
            {"maps": np.zeros((4, 4)), "sigma": 1.0, "radius": 2**40},
            ValueError,
            "radius",
        ),
        ({"maps": np.zeros((4, 4)), "sigma": True}, TypeError, "sigma"),
        ({"maps": np.zeros((4, 4)), "sigma": 1j}, TypeError, "sigma"),
        ({"maps": np.zeros((4, 4)), "sigma": None}, TypeError, "sigma"),
        ({"maps": np.zeros((4, 4)), "sigma": [1.0]}, TypeError, "sigma"),
    ],
)
def test_gaussian_blur_rejects_empty_maps_huge_kernels_and_odd_sigmas(
    kwargs, error, match
):
    # An empty H or W used to raise numpy's "can't extend empty axis", sigma = 1e12
    # to allocate 32 TB of taps, a complex sigma to fail in float().
    with pytest.raises(error, match=f"gaussian_blur: {match}"):
        gaussian_blur(**kwargs)


def test_gaussian_blur_empty_batch_is_fine():
    assert gaussian_blur(jnp.zeros((0, 4, 5)), 1.0).shape == (0, 4, 5)


@pytest.mark.parametrize("mode", list(SCIPY_MODE))
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 7)])
@pytest.mark.parametrize("sigma", [50.0, 3000.0])
def test_gaussian_blur_kernel_far_wider_than_the_map_matches_scipy(
    rng, x64, mode, shape, sigma
):
    # Radius 200 and 12000 on maps of 1 to 7 pixels: the kernel is folded onto the
    # axis (exact for every mode), in O(radius + n²) instead of O(n radius).
    maps = rng.standard_normal(shape)
    out = gaussian_blur(jnp.asarray(maps), sigma, mode=mode)
    expected = scipy_blur(maps, sigma, mode=SCIPY_MODE[mode])
    # float64 against float64; the folded sums add the taps in another order.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_gaussian_blur_folded_kernel_gradients(rng, x64):
    maps = jnp.asarray(rng.standard_normal((3, 4)))
    for mode in ("symmetric", "edge"):  # a periodic fold and the tails' fold

        def blur(x, sigma, mode=mode):
            return gaussian_blur(x, sigma, radius=40, mode=mode)

        check_grads(jax.jit(blur), (maps, 12.0), order=1, modes=["fwd", "rev"])


def test_gaussian_blur_half_precision_is_computed_in_float32():
    # Taps beyond 255 overflowed x² in float16 and were dropped (error 5e-3 here).
    maps = jnp.linspace(0.0, 1.0, 300, dtype=jnp.float16)[None]
    out = gaussian_blur(maps, 150.0)
    assert out.dtype == jnp.float16
    expected = scipy_blur(np.asarray(maps, np.float64), 150.0)
    # float16 outputs near 0.5: a spacing of 4.9e-4.
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1e-3)
    bf16 = gaussian_blur(maps.astype(jnp.bfloat16), 150.0)
    assert bf16.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- resize


def _src_linear(dst, n_in, n_out, align_corners):
    if align_corners:
        return dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return max((dst + 0.5) * n_in / n_out - 0.5, 0.0)


def ref_bilinear(x, shape, align_corners=False):
    """Plain per-pixel loop: PyTorch's bilinear rule (2-D, not separable code)."""
    h, w = x.shape
    out = np.zeros(shape)
    for i in range(shape[0]):
        sy = _src_linear(i, h, shape[0], align_corners)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, ty = min(y0 + 1, h - 1), sy - y0
        for j in range(shape[1]):
            sx = _src_linear(j, w, shape[1], align_corners)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, tx = min(x0 + 1, w - 1), sx - x0
            out[i, j] = (1 - ty) * ((1 - tx) * x[y0, x0] + tx * x[y0, x1]) + ty * (
                (1 - tx) * x[y1, x0] + tx * x[y1, x1]
            )
    return out


def _keys(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def ref_bicubic(x, shape, align_corners=False):
    """Plain loop over the 4x4 neighbourhood, border pixels replicated (PyTorch)."""
    h, w = x.shape
    out = np.zeros(shape)
    for i in range(shape[0]):
        if align_corners:
            sy = i * (h - 1) / (shape[0] - 1) if shape[0] > 1 else 0.0
        else:
            sy = (i + 0.5) * h / shape[0] - 0.5
        y0 = math.floor(sy)
        for j in range(shape[1]):
            if align_corners:
                sx = j * (w - 1) / (shape[1] - 1) if shape[1] > 1 else 0.0
            else:
                sx = (j + 0.5) * w / shape[1] - 0.5
            x0 = math.floor(sx)
            total = 0.0
            for a in range(-1, 3):
                for b in range(-1, 3):
                    yy = min(max(y0 + a, 0), h - 1)
                    xx = min(max(x0 + b, 0), w - 1)
                    total += _keys(sy - (y0 + a)) * _keys(sx - (x0 + b)) * x[yy, xx]
            out[i, j] = total
    return out


def ref_nearest(x, shape):
    h, w = x.shape
    rows = [
        min(int(np.float32(i) * np.float32(h / shape[0])), h - 1)
        for i in range(shape[0])
    ]
    cols = [
        min(int(np.float32(j) * np.float32(w / shape[1])), w - 1)
        for j in range(shape[1])
    ]
    return x[np.ix_(rows, cols)]


RESIZE_SHAPES = [
    ((7, 9), (28, 33)),  # upsampling, non-integer factors
    ((14, 14), (56, 56)),  # feature map to image, integer factor
    ((33, 28), (9, 7)),  # downsampling
    ((5, 6), (5, 6)),  # unchanged
    ((1, 5), (3, 1)),  # degenerate axes
]


@pytest.mark.parametrize("in_shape, out_shape", RESIZE_SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_matches_numpy_loop(
    rng, x64, in_shape, out_shape, align_corners
):
    x = rng.standard_normal(in_shape)
    out = resize(jnp.asarray(x), out_shape, align_corners=align_corners)
    expected = ref_bilinear(x, out_shape, align_corners)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_shape, out_shape", RESIZE_SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bicubic_matches_numpy_loop(
    rng, x64, in_shape, out_shape, align_corners
):
    x = rng.standard_normal(in_shape)
    out = resize(
        jnp.asarray(x), out_shape, method="bicubic", align_corners=align_corners
    )
    expected = ref_bicubic(x, out_shape, align_corners)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_shape, out_shape", RESIZE_SHAPES + [((13, 13), (224, 97))])
def test_resize_nearest_matches_numpy_loop(rng, in_shape, out_shape):
    x = rng.standard_normal(in_shape).astype(np.float32)
    np.testing.assert_array_equal(
        resize(x, out_shape, method="nearest"), ref_nearest(x, out_shape)
    )


TORCH_CASES = [
    ("bilinear", False, False),
    ("bilinear", True, False),
    ("bilinear", False, True),
    ("bicubic", False, False),
    ("bicubic", True, False),
    ("bicubic", False, True),
    ("nearest", False, False),
]


@pytest.mark.parametrize("method, align_corners, antialias", TORCH_CASES)
@pytest.mark.parametrize(
    "in_shape, out_shape",
    RESIZE_SHAPES
    + [((28, 28), (224, 224)), ((64, 48), (17, 30)), ((31, 17), (224, 13))],
)
def test_resize_matches_torch_interpolate(
    rng, in_shape, out_shape, method, align_corners, antialias
):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3) + in_shape).astype(np.float32)
    kwargs = {} if method == "nearest" else {"align_corners": align_corners}
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=out_shape, mode=method, antialias=antialias, **kwargs
    ).numpy()
    out = resize(
        x, out_shape, method=method, align_corners=align_corners, antialias=antialias
    )
    # PyTorch computes source coordinates and weights in float32 (an error of about
    # 224 * 6e-8 pixels at 224), jad in float64; values are O(1).
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_resize_nearest_keeps_bool_masks_and_matches_torch(rng):
    torch = pytest.importorskip("torch")
    masks = rng.random((2, 13, 11)) > 0.5
    out = resize(masks, (40, 29), method="nearest")
    assert out.dtype == jnp.bool_
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(masks[:, None].astype(np.float32)), size=(40, 29)
    )[:, 0].numpy()
    np.testing.assert_array_equal(out, expected > 0.5)


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "nearest"])
def test_resize_channels_last_equals_moved_axes(rng, method):
    images = rng.random((2, 10, 12, 3)).astype(np.float32)
    out = resize(images, (25, 7), method=method, channels_last=True)
    expected = resize(np.moveaxis(images, -1, 1), (25, 7), method=method)
    np.testing.assert_allclose(out, np.moveaxis(np.asarray(expected), 1, -1), atol=1e-6)


def test_resize_constant_map_stays_constant_and_identity_is_exact(rng):
    for method in ("bilinear", "bicubic"):
        out = resize(jnp.full((4, 6), 2.5), (17, 9), method=method)
        np.testing.assert_allclose(out, 2.5, rtol=1e-6)
    x = jnp.asarray(rng.random((3, 8, 8)), jnp.float32)
    for method in ("bilinear", "bicubic", "nearest"):
        np.testing.assert_array_equal(resize(x, (8, 8), method=method), x)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("method", ["bilinear", "bicubic", "nearest"])
def test_resize_jit_and_vmap_equal_loop(rng, transform, method):
    maps = jnp.asarray(rng.random((4, 7, 5)), jnp.float32)

    def up(m):
        return resize(m, (21, 16), method=method)

    looped = jnp.stack([up(m) for m in maps])
    np.testing.assert_allclose(transform(up)(maps), looped, atol=1e-6)
    np.testing.assert_allclose(transform(jax.vmap(up))(maps), looped, atol=1e-6)


@pytest.mark.parametrize(
    "method, align_corners, antialias",
    [("bilinear", False, False), ("bilinear", True, False), ("bicubic", False, True)],
)
def test_resize_gradients(rng, x64, method, align_corners, antialias):
    maps = jnp.asarray(rng.standard_normal((2, 5, 4)))
    check_grads(
        lambda m: resize(
            m, (7, 3), method=method, align_corners=align_corners, antialias=antialias
        ),
        (maps,),
        order=1,
        modes=["rev"],
    )


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((np.zeros(4), (2, 2)), {}, ValueError, "maps must be"),
        ((np.zeros((4, 4)), (2, 2)), {"channels_last": True}, ValueError, "H, W, C"),
        ((np.zeros((4, 4), int), (2, 2)), {}, TypeError, "maps"),
        ((np.zeros((4, 4)), (2,)), {}, ValueError, "shape must be a pair"),
        ((np.zeros((4, 4)), (0, 2)), {}, ValueError, "shape"),
        ((np.zeros((0, 4)), (2, 2)), {}, ValueError, "H, W >= 1"),
        ((np.zeros((3, 0)), (2, 2)), {"method": "nearest"}, ValueError, "H, W >= 1"),
        ((np.zeros((4, 4)), (2.0, 2)), {}, TypeError, "shape"),
        ((np.zeros((4, 4)), (2, 2)), {"method": "cubic"}, ValueError, "method"),
        (("abc", (2, 2)), {"method": "nearest"}, TypeError, "resize: maps"),
        ((object(), (2, 2)), {"method": "nearest"}, TypeError, "resize: maps"),
        (
            (np.zeros((4, 4)), (2, 2)),
            {"method": "nearest", "align_corners": True},
            ValueError,
            "align_corners",
        ),
        (
            (np.zeros((4, 4)), (2, 2)),
            {"antialias": True, "align_corners": True},
            ValueError,
            "antialias",
        ),
    ],
)
def test_resize_rejects_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        resize(*args, **kwargs)


# ----------------------------------------------------------------------- morphology

SCIPY_OPS = {
    dilate: ndi.binary_dilation,
    erode: ndi.binary_erosion,
    opening: ndi.binary_opening,
    closing: ndi.binary_closing,
}
ASYMMETRIC = np.array([[0, 1, 0], [1, 1, 1], [1, 1, 0]], bool)


@pytest.mark.parametrize("op", list(SCIPY_OPS))
@pytest.mark.parametrize(
    "footprint",
    [np.ones((3, 3), bool), np.ones((3, 5), bool), ASYMMETRIC, np.ones((1, 3), bool)],
    ids=["3x3", "3x5", "asymmetric", "1x3"],
)
@pytest.mark.parametrize("border", ["zero", "one"])
def test_morphology_matches_scipy(rng, op, footprint, border):
    masks = rng.random((3, 17, 13)) > 0.4
    masks[0] = True  # a full mask exercises the border rule
    out = op(masks, footprint=footprint, border=border)
    for index in range(masks.shape[0]):
        expected = SCIPY_OPS[op](
            masks[index], structure=footprint, border_value=int(border == "one")
        )
        np.testing.assert_array_equal(out[index], expected)


@pytest.mark.parametrize("op", list(SCIPY_OPS))
@pytest.mark.parametrize("size", [3, 5])
def test_morphology_size_equals_square_footprint(rng, op, size):
    masks = rng.random((2, 15, 16)) > 0.5
    np.testing.assert_array_equal(
        op(masks, size=size), op(masks, footprint=np.ones((size, size), bool))
    )


def test_morphology_border_ignore_matches_skimage(rng):
    morphology = pytest.importorskip("skimage.morphology")
    masks = rng.random((16, 19)) > 0.3
    footprint = morphology.disk(2).astype(bool)
    pairs = [
        (dilate, morphology.dilation),
        (erode, morphology.erosion),
        (opening, morphology.opening),
        (closing, morphology.closing),
    ]
    for op, ref in pairs:
        # skimage's grey morphology on bool images, with its default (neutral) border.
        expected = ref(masks, footprint).astype(bool)
        np.testing.assert_array_equal(
            op(masks, footprint=footprint, border="ignore"),
            expected,
            err_msg=op.__name__,
        )


def test_morphology_default_is_3x3_square_and_opening_removes_specks():
    mask = np.zeros((9, 9), bool)
    mask[1:6, 1:6] = True
    mask[8, 0] = True
    # jad's default is the full 3x3 square, not scipy's default cross.
    square = np.ones((3, 3), bool)
    np.testing.assert_array_equal(opening(mask), ndi.binary_opening(mask, square))
    assert not bool(opening(mask)[8, 0]) and bool(opening(mask)[3, 3])


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("op", list(SCIPY_OPS))
def test_morphology_jit_and_vmap_equal_loop(rng, transform, op):
    masks = jnp.asarray(rng.random((3, 2, 10, 11)) > 0.5)

    def fn(m):
        return op(m, size=3)

    looped = jnp.stack([fn(m) for m in masks])
    np.testing.assert_array_equal(transform(fn)(masks), looped)
    np.testing.assert_array_equal(transform(jax.vmap(fn))(masks), looped)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"masks": np.zeros((4, 4))}, TypeError, "masks must be a bool"),
        ({"masks": np.zeros(4, bool)}, ValueError, "masks must be"),
        ({"masks": np.zeros((4, 4), bool), "size": 2}, ValueError, "size must be odd"),
        ({"masks": np.zeros((4, 4), bool), "size": 0}, ValueError, "size"),
        ({"masks": np.zeros((4, 4), bool), "size": 3.0}, TypeError, "size"),
        (
            {"masks": np.zeros((4, 4), bool), "size": 3, "footprint": np.ones((3, 3))},
            ValueError,
            "not both",
        ),
        (
            {"masks": np.zeros((4, 4), bool), "footprint": np.ones((3, 3))},
            TypeError,
            "footprint must be a bool",
        ),
        (
            {"masks": np.zeros((4, 4), bool), "footprint": np.ones((2, 3), bool)},
            ValueError,
            "odd",
        ),
        (
            {"masks": np.zeros((4, 4), bool), "footprint": np.zeros((3, 3), bool)},
            ValueError,
            "at least one",
        ),
        ({"masks": np.zeros((4, 4), bool), "border": "reflect"}, ValueError, "border"),
        ({"masks": np.zeros((0, 4), bool)}, ValueError, "masks must have H, W >= 1"),
        ({"masks": np.zeros((2, 4, 0), bool)}, ValueError, "masks must have H, W"),
        ({"masks": "abc"}, TypeError, "masks must be a bool array; got str"),
        ({"masks": object()}, TypeError, "masks must be a bool array; got object"),
    ],
)
@pytest.mark.parametrize("op", [dilate, erode, opening, closing])
def test_morphology_rejects_bad_input(op, kwargs, error, match):
    with pytest.raises(error, match=f"{op.__name__}: .*{match}|{match}"):
        op(**kwargs)


@pytest.mark.parametrize("op", list(SCIPY_OPS))
@pytest.mark.parametrize("border", ["zero", "one"])
def test_morphology_footprint_larger_than_the_map_matches_scipy(rng, op, border):
    # A rectangle wider than 2H + 1 (2W + 1) is cut to it: every window already
    # covers the whole map and outside pixels on both sides. (A size of 10**5+1
    # used to pad the map to 10**10 pixels.)
    masks = rng.random((2, 5, 6)) > 0.4
    masks[0] = True
    run = jax.jit(op, static_argnames=("size", "border"))
    for size in [(15, 3), (3, 21), (41, 41)]:
        out = run(masks, size=size, border=border)
        for index in range(masks.shape[0]):
            expected = SCIPY_OPS[op](
                masks[index],
                structure=np.ones(size, bool),
                border_value=int(border == "one"),
            )
            np.testing.assert_array_equal(out[index], expected, err_msg=str(size))
    huge = run(masks, size=10**5 + 1, border=border)
    np.testing.assert_array_equal(huge, run(masks, size=(11, 13), border=border))


def test_morphology_empty_batch_is_fine():
    assert dilate(jnp.zeros((0, 4, 5), bool)).shape == (0, 4, 5)
