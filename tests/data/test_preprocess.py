"""jad.data.preprocess: conversions, geometry, normalisation, masks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jad import data
from jad.data import (
    CENTER_CROP_224,
    SQUARE_224,
    Transform,
    load_image,
    load_mask,
    normalize_imagenet,
    output_size,
    preprocess_image,
    preprocess_mask,
)
from jad.errors import DatasetError

RAW = Transform(size=None, normalize=False)


def reference_pipeline(path, size_hw, crop_hw=None, shorter=False):
    """torchvision's PIL pipeline written out: convert, Resize, CenterCrop, ToTensor,
    Normalize (torchvision.transforms semantics, independent of jad's code)."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if shorter:
        s = size_hw
        new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    else:
        new_h, new_w = size_hw
    img = img.resize((new_w, new_h), Image.BILINEAR)
    if crop_hw is not None:
        ch, cw = crop_hw
        top = int(round((new_h - ch) / 2.0))
        left = int(round((new_w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, dtype=np.float64) / 255.0
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return (x - mean) / std


@pytest.fixture
def rgb_file(tmp_path, rng):
    path = tmp_path / "rgb.png"
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(path)
    return path


# --- geometry and the reference pipelines --------------------------------------------


@pytest.mark.parametrize(
    "transform, size, crop, shorter",
    [
        (Transform(), (256, 256), None, False),
        (SQUARE_224, (224, 224), None, False),
        (Transform(size=(20, 30)), (20, 30), None, False),
        (Transform(size=32, keep_aspect_ratio=True, crop=24), 32, (24, 24), True),
        (CENTER_CROP_224, 256, (224, 224), True),
    ],
)
def test_load_image_matches_torchvision_style_pipeline(
    rgb_file, transform, size, crop, shorter
):
    out = load_image(rgb_file, transform=transform)
    ref = reference_pipeline(rgb_file, size, crop, shorter)
    assert out.dtype == np.float32 and out.shape == ref.shape
    # float32 arithmetic on the same uint8 values: 1e-5 absolute.
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_output_size_follows_torchvision_resize_and_crop():
    # Resize(256) on 300x400 (H x W): short side 256, long int(256 * 400 / 300) = 341.
    keep = Transform(size=256, keep_aspect_ratio=True)
    assert output_size(keep, 300, 400) == (256, 341)
    assert output_size(keep, 400, 300) == (341, 256)
    assert output_size(CENTER_CROP_224, 300, 400) == (224, 224)
    assert output_size(Transform(size=None), 7, 9) == (7, 9)
    assert output_size(Transform(size=(5, 6)), 70, 90) == (5, 6)


def test_centre_crop_offsets_round_like_torchvision():
    # 5 columns cropped to 2: offset round(1.5) = 2 (banker's rounding, as
    # torchvision's int(round(...))); 4 -> 2: offset 1.
    img = np.arange(5, dtype=np.uint8)[None, :].repeat(4, 0) * 50
    out = preprocess_image(
        img, transform=Transform(size=None, crop=(2, 2), normalize=False)
    )
    np.testing.assert_allclose(out[0, :, 0] * 255, [100, 150], atol=1e-4)


def test_transform_is_hashable_and_normalises_its_fields():
    assert Transform(size=224) == Transform(size=(224, 224))
    assert hash(Transform(crop=224)) == hash(Transform(crop=(224, 224)))
    assert Transform(size=np.int64(8)).size == (8, 8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(size=0), ValueError, "size"),
        (dict(size=2.5), TypeError, "size"),
        (dict(size=(3, 4, 5)), TypeError, "size"),
        (dict(crop=(1, 0)), ValueError, "crop"),
        (dict(size=(3, 4), keep_aspect_ratio=True), ValueError, "keep_aspect_ratio"),
        (dict(size=None, keep_aspect_ratio=True), ValueError, "keep_aspect_ratio"),
        (dict(resample="cubic"), ValueError, "'bilinear'"),
    ],
)
def test_transform_rejects_bad_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        Transform(**kwargs)


def test_crop_larger_than_image_names_the_file(rgb_file):
    with pytest.raises(DatasetError, match="rgb.png"):
        load_image(rgb_file, transform=Transform(size=None, crop=64))


# --- colour modes: grayscale, RGBA, palette, 16-bit ----------------------------------


def test_grayscale_file_becomes_three_equal_channels(tmp_path, rng):
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", transform=RAW)
    assert out.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray / np.float32(255))


def test_grayscale_alpha_and_bilevel_files(tmp_path, rng):
    gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(gray, "L").convert("LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png", transform=RAW)
    np.testing.assert_array_equal(out[..., 1], gray / np.float32(255))
    bits = gray > 127
    Image.fromarray(bits).save(tmp_path / "b.png")  # mode "1"
    out = load_image(tmp_path / "b.png", transform=RAW)
    np.testing.assert_array_equal(out[..., 0], bits.astype(np.float32))


def test_rgba_file_drops_alpha_without_compositing(tmp_path, rng):
    rgba = rng.integers(0, 256, (8, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: colours must survive unchanged
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", transform=RAW)
    np.testing.assert_array_equal(out, rgba[..., :3] / np.float32(255))


def test_palette_file_reads_palette_colours(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    img.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png", transform=RAW) * 255
    np.testing.assert_allclose(out[0, 1], [255, 0, 0], atol=1e-4)
    np.testing.assert_allclose(out[0, 2], [0, 128, 255], atol=1e-4)
    np.testing.assert_allclose(out[1, 2], [0, 0, 0], atol=1e-4)


def test_16bit_file_keeps_its_precision(tmp_path):
    # Values that 8-bit conversion would collapse (they differ by less than 257).
    wide = np.array([[0, 1000, 1100], [30000, 65535, 257]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    out = load_image(tmp_path / "w.png", transform=RAW)
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[..., 2], wide / 65535.0, rtol=1e-6)
    assert out[0, 1, 0] < out[0, 2, 0]


def write_png_rgb16(path, array):
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    import struct
    import zlib

    h, w, _ = array.shape
    big = array.astype(">u2")
    raw = b"".join(b"\x00" + big[i].tobytes() for i in range(h))

    def chunk(tag, body):
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16bit_rgb_file_reads_at_8bit_precision(tmp_path, rng):
    wide = rng.integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    write_png_rgb16(tmp_path / "rgb16.png", wide)
    out = load_image(tmp_path / "rgb16.png", transform=RAW)
    assert out.shape == (3, 4, 3) and out.dtype == np.float32
    # PIL keeps the high byte: within one 8-bit level of the 16-bit value.
    np.testing.assert_allclose(out, wide / 65535.0, atol=1.0 / 255)


def test_16bit_file_resized_like_its_8bit_version(tmp_path, rng):
    gray8 = rng.integers(0, 256, (16, 12), dtype=np.uint8)
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "w.png")
    Image.fromarray(gray8, "L").save(tmp_path / "g.png")
    t = Transform(size=(7, 5), normalize=False)
    wide = load_image(tmp_path / "w.png", transform=t)
    narrow = load_image(tmp_path / "g.png", transform=t)
    # PIL's 8-bit resize rounds to uint8 after each of its two separable passes:
    # about one grey level apart at most.
    np.testing.assert_allclose(wide, narrow, atol=1.5 / 255)


def test_numpy_inputs_match_files(tmp_path, rng):
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    t = Transform(size=(6, 6))
    np.testing.assert_array_equal(
        preprocess_image(rgb, transform=t), load_image(tmp_path / "x.png", transform=t)
    )
    gray = rgb[..., 0]
    np.testing.assert_array_equal(
        preprocess_image(gray[..., None], transform=t),
        preprocess_image(gray, transform=t),
    )


def test_preprocess_image_rejects_bad_arrays_and_float_images():
    with pytest.raises(TypeError, match="uint8"):
        preprocess_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((4, 4, 2), np.uint8))
    for empty in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 0), np.uint16)):
        with pytest.raises(ValueError, match="is empty"):
            preprocess_image(empty)
    with pytest.raises(ValueError, match="'F'"):
        preprocess_image(Image.new("F", (4, 4)))
    with pytest.raises(TypeError, match="transform"):
        preprocess_image(np.zeros((4, 4), np.uint8), transform=(4, 4))


# --- normalisation (the functions themselves: tests/ops/test_image.py) ---------------


def test_transform_normalize_flag(rgb_file):
    t_raw = Transform(size=(8, 8), normalize=False)
    raw = load_image(rgb_file, transform=t_raw)
    norm = load_image(rgb_file, transform=Transform(size=(8, 8)))
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    np.testing.assert_allclose(normalize_imagenet(raw), norm, atol=1e-6)


# --- masks ----------------------------------------------------------------------------


def test_mask_threshold_is_strictly_greater(tmp_path):
    m = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", transform=Transform(size=None))
    assert out.dtype == bool
    assert out.tolist() == [[False, False, True, True]]
    zero = load_mask(tmp_path / "m.png", transform=Transform(size=None), threshold=0)
    assert zero.tolist() == [[False, True, True, True]]


def test_mask_geometry_matches_image_geometry(tmp_path):
    # A white rectangle drawn in both an image and its mask, on a non-square image:
    # after resize + crop with nearest resampling they must still coincide.
    m = np.zeros((45, 70), dtype=np.uint8)
    m[10:30, 20:50] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    Image.fromarray(m).convert("RGB").save(tmp_path / "i.png")
    t = Transform(
        size=32,
        keep_aspect_ratio=True,
        crop=(28, 30),
        resample="nearest",
        normalize=False,
    )
    mask = load_mask(tmp_path / "m.png", transform=t)
    image = load_image(tmp_path / "i.png", transform=t)
    assert mask.shape == image.shape[:2] == (28, 30)
    np.testing.assert_array_equal(mask, image[..., 0] > 0.5)
    assert mask.any() and not mask.all()


def test_mask_modes_rgb_palette_16bit(tmp_path):
    m = np.array([[0, 200], [90, 255]], dtype=np.uint8)
    want = (m > 127).tolist()
    Image.fromarray(m).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(m.astype(np.uint16) * 257).save(tmp_path / "w.png")
    pal = Image.fromarray(np.array([[0, 1], [0, 1]], dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    t = Transform(size=None)
    assert load_mask(tmp_path / "rgb.png", transform=t).tolist() == want
    assert load_mask(tmp_path / "w.png", transform=t).tolist() == want
    assert load_mask(tmp_path / "p.png", transform=t).tolist() == [
        [False, True],
        [False, True],
    ]


def test_mask_nearest_resize_keeps_values_binary(rng):
    m = (rng.random((40, 40)) > 0.5).astype(np.uint8) * 255
    out = preprocess_mask(m, transform=Transform(size=(13, 17)))
    # nearest resampling picks source pixels: every output equals one input pixel
    rows = np.floor((np.arange(13) + 0.5) * 40 / 13).astype(int)
    cols = np.floor((np.arange(17) + 0.5) * 40 / 17).astype(int)
    np.testing.assert_array_equal(out, m[np.ix_(rows, cols)] > 127)


def test_preprocess_mask_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        preprocess_mask(np.zeros((2, 2), np.uint8), threshold=255)
    with pytest.raises(TypeError, match="threshold"):
        preprocess_mask(np.zeros((2, 2), np.uint8), threshold=0.5)


# --- bad files ------------------------------------------------------------------------


def test_missing_file_is_dataset_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(DatasetError, match="nomask.png"):
        load_mask(tmp_path / "nomask.png")


def test_corrupt_and_truncated_files_are_dataset_errors(tmp_path, rng):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "full.jpg", quality=95
    )
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(DatasetError, match="junk.png"):
        load_mask(tmp_path / "junk.png")


@pytest.mark.parametrize(
    "transform, height, width",
    [(data.Transform(size=None), 30, 40),
     (data.Transform(size=16), 30, 40),
     (data.Transform(size=20, keep_aspect_ratio=True, crop=16), 30, 45),
     (data.Transform(size=(24, 20), crop=(16, 12)), 50, 37)],
)
def test_map_to_input_size_matches_torch_interpolate(transform, height, width, rng):
    torch = pytest.importorskip("torch")
    out_h, out_w = data.output_size(transform, height, width)
    amap = rng.random((out_h, out_w)).astype(np.float32)
    got = data.map_to_input_size(amap, transform, height, width, fill=-1.0)
    # reference: the resized frame with the crop's border filled, then torch
    if transform.size is None:
        frame_hw = (height, width)
    elif transform.keep_aspect_ratio:
        short = transform.size[0]
        frame_hw = ((int(short * height / width), short) if width <= height
                    else (short, int(short * width / height)))
    else:
        frame_hw = transform.size
    frame = np.full(frame_hw, -1.0, np.float32)
    top = int(round((frame_hw[0] - out_h) / 2))
    left = int(round((frame_hw[1] - out_w) / 2))
    frame[top : top + out_h, left : left + out_w] = amap
    want = torch.nn.functional.interpolate(
        torch.from_numpy(frame)[None, None], size=(height, width), mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    assert got.shape == (height, width)
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 interpolation


def test_map_to_input_size_refuses_a_map_of_another_size():
    with pytest.raises(ValueError, match=r"map_to_input_size: anomaly_map must be"):
        data.map_to_input_size(np.zeros((5, 5)), data.Transform(size=16), 30, 40,
                               fill=0.0)
