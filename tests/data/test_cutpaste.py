"""jad.data.cutpaste: F2PAD eq. 16 cut-paste anomalies with exact masks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jad.data.cutpaste import CutPasteResult, cut_paste, random_defect_mask

TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


@pytest.fixture
def image(rng):
    # A textured image with bright and dark pixels, so both push directions occur.
    return jnp.asarray(rng.random((24, 20, 3)), jnp.float32)


@pytest.fixture
def sources():
    masks = np.zeros((3, 9, 7), bool)
    masks[0, 2:7, 1:5] = True
    masks[2, 4, 3] = True  # masks[1] is empty and must never be picked
    return jnp.asarray(masks)


def changed(result: CutPasteResult, image) -> jax.Array:
    return jnp.any(result.image != image, axis=-1)


def test_cut_paste_is_deterministic_given_the_key(image, sources):
    a = cut_paste(jax.random.key(3), image, sources)
    b = cut_paste(jax.random.key(3), image, sources)
    c = cut_paste(jax.random.key(4), image, sources)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("kind", ["color", "structural"])
@pytest.mark.parametrize("min_distance", [0.05, 0.2, 0.28])
def test_mask_is_exactly_the_changed_pixels(rng, image, sources, kind, min_distance):
    other = jnp.asarray(rng.random(image.shape), jnp.float32)
    kwargs = {"other_image": other} if kind == "structural" else {}
    keys = jax.random.split(jax.random.key(0), 64)
    out = jax.vmap(
        lambda k: cut_paste(
            k, image, sources, kind=kind, min_distance=min_distance, **kwargs
        )
    )(keys)
    assert out.mask.dtype == jnp.bool_ and out.mask.shape == (64, 24, 20)
    assert bool(jnp.all(jnp.any(out.mask, axis=(1, 2))))  # never empty
    np.testing.assert_array_equal(changed(out, image), out.mask)
    # Every replaced pixel is at least min_distance away (float32 rounding aside).
    distance = jnp.linalg.norm(out.image - image, axis=-1)
    assert float(jnp.min(jnp.where(out.mask, distance, jnp.inf))) >= min_distance - 1e-6
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    assert out.image.dtype == jnp.float32


def test_pixels_too_close_are_multiplied_by_the_factor():
    # other_image == image == constant: every structural anomaly pixel equals the
    # original, so all are pushed: bright ones to a * factor, dark ones to
    # 1 - (1 - a) * factor.
    source = jnp.ones((4, 4), bool)
    for value, expected in [(0.8, 0.8 * 0.5), (0.3, 1.0 - 0.7 * 0.5)]:
        image = jnp.full((10, 10, 3), value, jnp.float32)
        out = cut_paste(
            jax.random.key(1), image, source, kind="structural", other_image=image
        )
        np.testing.assert_allclose(out.image[out.mask], expected, rtol=1e-6)
        np.testing.assert_array_equal(out.image[~out.mask], np.float32(value))


def test_single_pixel_source_without_rotation_or_scaling_pastes_one_pixel(image):
    source = jnp.zeros((5, 5), bool).at[2, 3].set(True)
    for seed in range(5):
        out = cut_paste(
            jax.random.key(seed), image, source, scale_range=(1.0, 1.0), max_angle=0.0
        )
        assert int(out.mask.sum()) == 1
        colour = out.image[out.mask][0]
        assert float(colour.min()) >= 0 and float(colour.max()) <= 1


def test_unrotated_unscaled_rectangle_is_a_cropped_translate(image, sources):
    for seed in range(8):
        out = cut_paste(
            jax.random.key(seed), image, sources[0], scale_range=(1, 1), max_angle=0
        )
        rows, cols = np.nonzero(np.asarray(out.mask))
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        # A (cropped) 5x4 rectangle, completely filled.
        assert height <= 5 and width <= 4 and rows.size == height * width


def test_structural_opposite_half_takes_the_other_half():
    width = 16
    image = jnp.full((8, width, 3), 0.5, jnp.float32)
    # Left half dark, right half bright: both are > 0.2 from the 0.5 image.
    other = jnp.where(jnp.arange(width)[None, :, None] < width // 2, 0.1, 0.9)
    other = jnp.broadcast_to(other, image.shape).astype(jnp.float32)
    source = jnp.ones((1, 1), bool)
    for seed in range(12):
        out = cut_paste(
            jax.random.key(seed),
            image,
            source,
            kind="structural",
            other_image=other,
            region="opposite_half",
            scale_range=(1, 1),
        )
        (row,), (col,) = np.nonzero(np.asarray(out.mask))
        expected = 0.9 if col < width // 2 else 0.1
        np.testing.assert_allclose(out.image[row, col], expected, rtol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("kind", ["color", "structural"])
def test_cut_paste_jit_and_vmap_equal_loop(rng, image, sources, transform, kind):
    other = jnp.asarray(rng.random(image.shape), jnp.float32)
    kwargs = {"other_image": other} if kind == "structural" else {}

    def fn(k):
        return cut_paste(k, image, sources, kind=kind, **kwargs)

    keys = jax.random.split(jax.random.key(7), 4)
    looped = [fn(k) for k in keys]
    vmapped = transform(jax.vmap(fn))(keys)
    for i, one in enumerate(looped):
        np.testing.assert_array_equal(vmapped.image[i], one.image)
        np.testing.assert_array_equal(vmapped.mask[i], one.mask)
        single = transform(fn)(keys[i])
        np.testing.assert_array_equal(single.mask, one.mask)


def test_cut_paste_accepts_raw_uint32_keys(image, sources):
    out = cut_paste(jax.random.PRNGKey(0), image, sources)
    assert bool(out.mask.any())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kind": "texture"}, ValueError, "kind"),
        ({"key": 0}, TypeError, "key must be one JAX PRNG key"),
        ({"key": jax.random.split(jax.random.key(0))}, TypeError, "key"),
        ({"image": np.zeros((0, 4, 3), np.float32)}, ValueError, "non-empty"),
        ({"region": "left"}, ValueError, "region"),
        ({"image": np.zeros((4, 4), np.float32)}, ValueError, "image must be"),
        ({"image": np.zeros((4, 4, 3), np.uint8)}, TypeError, "image"),
        ({"image": np.full((4, 4, 3), 1.5, np.float32)}, ValueError, r"\[0, 1\]"),
        ({"mask_source": np.ones((3, 3))}, TypeError, "mask_source must be a bool"),
        ({"mask_source": np.zeros((3, 3), bool)}, ValueError, "no True pixel"),
        ({"mask_source": np.ones(3, bool)}, ValueError, "mask_source must be"),
        ({"kind": "structural"}, ValueError, "needs other_image"),
        (
            {"other_image": np.zeros((4, 4, 3), np.float32)},
            ValueError,
            "only used with kind='structural'",
        ),
        (
            {"kind": "structural", "other_image": np.zeros((5, 4, 3), np.float32)},
            ValueError,
            "other_image must have the shape",
        ),
        ({"scale_range": (0.0, 1.0)}, ValueError, "scale_range"),
        ({"scale_range": (2.0, 1.0)}, ValueError, "scale_range"),
        ({"scale_range": 1.0}, ValueError, "scale_range"),
        ({"factor": 1.0}, ValueError, "factor"),
        ({"min_distance": 0.0}, ValueError, "min_distance"),
        ({"min_distance": 0.3}, ValueError, "min_distance"),
        ({"max_angle": -1.0}, ValueError, "max_angle"),
    ],
)
def test_cut_paste_rejects_bad_input(kwargs, error, match):
    args = {
        "key": jax.random.key(0),
        "image": np.full((4, 4, 3), 0.5, np.float32),
        "mask_source": np.ones((2, 2), bool),
    }
    args.update(kwargs)
    with pytest.raises(error, match=f"cut_paste: .*{match}"):
        cut_paste(args.pop("key"), args.pop("image"), args.pop("mask_source"), **args)


def test_min_distance_bound_is_the_documented_formula():
    bound = (1 - 0.5) * math.sqrt(3) / 2 / 1.5
    ok = cut_paste(
        jax.random.key(0),
        jnp.full((4, 4, 3), 0.5),
        jnp.ones((2, 2), bool),
        min_distance=bound,
    )
    assert bool(ok.mask.any())
    gray = jnp.full((4, 4, 1), 0.5)  # one channel: a smaller bound (0.167)
    with pytest.raises(ValueError, match="min_distance"):
        cut_paste(jax.random.key(0), gray, jnp.ones((2, 2), bool), min_distance=0.2)
    # the default takes the bound when 0.2 is out of reach, and keeps its promise
    gray_bound = (1 - 0.5) * 1 / 2 / 1.5
    for seed in range(8):
        out = cut_paste(jax.random.key(seed), gray, jnp.ones((2, 2), bool))
        moved = jnp.abs(out.image - gray)[..., 0]
        assert float(jnp.min(jnp.where(out.mask, moved, 1.0))) >= gray_bound - 1e-6


# -------------------------------------------------------------- random_defect_mask


@pytest.mark.parametrize("kind", ["ellipse", "blob", "scratch"])
def test_random_defect_mask_is_never_empty_and_deterministic(kind):
    keys = jax.random.split(jax.random.key(0), 16)
    masks = jax.vmap(lambda k: random_defect_mask(k, (40, 33), kind=kind))(keys)
    assert masks.shape == (16, 40, 33) and masks.dtype == jnp.bool_
    assert bool(jnp.all(jnp.any(masks, axis=(1, 2))))
    # Not the whole source either.
    assert float(masks.mean()) < 0.5
    looped = jnp.stack([random_defect_mask(k, (40, 33), kind=kind) for k in keys])
    np.testing.assert_array_equal(masks, looped)
    jitted = jax.jit(random_defect_mask, static_argnames=("shape", "kind"))
    np.testing.assert_array_equal(jitted(keys[0], shape=(40, 33), kind=kind), masks[0])


@pytest.mark.parametrize(
    "shape, kwargs, error, match",
    [
        ((3, 10), {}, ValueError, "shape"),
        ((10,), {}, ValueError, "shape must be a pair"),
        ((10.0, 10), {}, TypeError, "shape"),
        ((10, 10), {"kind": "star"}, ValueError, "kind"),
    ],
)
def test_random_defect_mask_rejects_bad_input(shape, kwargs, error, match):
    with pytest.raises(error, match=f"random_defect_mask: .*{match}"):
        random_defect_mask(jax.random.key(0), shape, **kwargs)
