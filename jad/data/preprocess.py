"""Image and mask preprocessing as the papers' reference code does it (PIL on the host).

One :class:`Transform` describes the whole pipeline: decode, convert to 3-channel
RGB, resize, optionally centre-crop, scale to ``[0, 1]`` float32 and optionally
normalise with the ImageNet mean and standard deviation. Masks go through the same
geometry with nearest-neighbour resampling and are binarised afterwards.

Conventions: images are NHWC (here one image, (H, W, 3)) float32; with
``Transform(normalize=True)`` (the default) they are ImageNet-normalised, which is what
``jad.backbones`` expects; with ``normalize=False`` they are in ``[0, 1]`` (what
overlays need; :func:`denormalize_imagenet` also undoes the normalisation). Masks are
(H, W) bool, True on defective pixels.

Reference pipelines this reproduces (the official PatchCore code,
``amazon-science/patchcore-inspection``; the PaDiM code the papers follow; anomalib; the
official PSDL code, ``StefanoSamele-PoliMi/PSDL-Anomaly-Detection``):

- official PatchCore / PaDiM on MVTec AD: ``Resize(256)`` (bilinear, shorter side) then
  ``CenterCrop(224)``: ``Transform(size=256, keep_aspect_ratio=True, crop=224)``
  (:data:`CENTER_CROP_224`);
- anomalib and jad's MTD protocol: resize to a square without crop:
  ``Transform(size=224)`` (:data:`SQUARE_224`) or the default ``Transform()`` (256);
- PSDL: the same with ``resample="bicubic"`` (MVTec) or ``"lanczos"`` (PIL's
  ``ANTIALIAS``, MTD and BTAD).

Resizing happens in PIL on 8-bit RGB exactly as torchvision does on PIL images (so the
rounding to uint8 after the resize is part of the pipeline); scaling to float comes
after. 16-bit grayscale images are resized in PIL's 32-bit float mode instead, so that
their extra precision is kept; 16-bit RGB PNGs are read by PIL as 8-bit RGB (their
high bytes). EXIF orientation tags are not applied (the reference pipelines ignore
them too).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import numpy as np
from PIL import Image

from jad import _checks
from jad.errors import DatasetError
from jad.ops.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_imagenet,
    normalize_imagenet,
)

__all__ = [
    "CENTER_CROP_224",
    "DEFAULT_TRANSFORM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SQUARE_224",
    "Transform",
    "denormalize_imagenet",
    "load_image",
    "load_mask",
    "map_to_input_size",
    "normalize_imagenet",
    "output_size",
    "preprocess_image",
    "preprocess_mask",
]

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,  # PIL's former ANTIALIAS
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# PIL modes holding more than 8 bits per sample (grayscale). Their values are read on
# a 16-bit scale (0..65535); mode "I" (32-bit) is how PIL opens some 16-bit PNGs.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WIDE_MAX = 65535.0


def _as_hw(fn: str, name: str, value) -> tuple[int, int] | None:
    """``value`` as (H, W) (an int means a square), or None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        )
    ):
        raise TypeError(
            f"{fn}: {name} must be an int, a pair of ints (H, W) or None; "
            f"got {value!r}."
        )
    if min(value) < 1:
        raise ValueError(f"{fn}: {name} must be positive; got {tuple(value)}.")
    return int(value[0]), int(value[1])


@dataclasses.dataclass(frozen=True)
class Transform:
    """How an image becomes (H, W, 3) float32 (and its mask (H, W) bool).

    Frozen and hashable, like method Configs. Steps, in order: convert to RGB, resize to
    ``size``, centre-crop to ``crop``, scale to ``[0, 1]``, normalise.

    Attributes:
      size: resize target. An int ``s`` means ``(s, s)`` (anomalib, MTD protocol), or,
        with ``keep_aspect_ratio=True``, the length of the shorter side
        (torchvision's ``Resize(s)``). A pair is (H, W). None keeps the file's size
        (images of different sizes then cannot share a batch).
      keep_aspect_ratio: resize the shorter side to ``size`` (int ``size`` only); the
        longer side becomes ``int(size * long / short)`` as in torchvision.
      crop: centre crop (H, W) (or an int for a square) after resizing; None for no
        crop. The offsets are ``int(round((H - h) / 2))`` as in torchvision.
      resample: PIL filter for images ("bilinear" default as torchvision; "bicubic",
        "lanczos" (PIL's ANTIALIAS), "nearest", "box", "hamming"). Masks always use
        nearest neighbour.
      normalize: subtract :data:`IMAGENET_MEAN` and divide by :data:`IMAGENET_STD`;
        False leaves the image in ``[0, 1]``.
    """

    size: int | tuple[int, int] | None = 256
    keep_aspect_ratio: bool = False
    crop: int | tuple[int, int] | None = None
    resample: Resample = "bilinear"
    normalize: bool = True

    def __post_init__(self):
        size = _as_hw("Transform", "size", self.size)
        crop = _as_hw("Transform", "crop", self.crop)
        if self.keep_aspect_ratio and (size is None or size[0] != size[1]):
            raise ValueError(
                "Transform: keep_aspect_ratio=True needs an int size (the shorter "
                f"side); got size={self.size!r}."
            )
        _checks.check_choice("Transform", "resample", self.resample, tuple(_RESAMPLE))
        # Store normalised, hashable values (tuples, Python ints).
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "crop", crop)


DEFAULT_TRANSFORM = Transform()
# Official PatchCore / PaDiM (MVTec AD): Resize(256), shorter side; CenterCrop(224).
CENTER_CROP_224 = Transform(size=256, keep_aspect_ratio=True, crop=224)
# jad's MTD protocol (see jad.data.mtd) and anomalib: a plain 224x224 resize.
SQUARE_224 = Transform(size=224)


def _check_transform(fn: str, transform) -> Transform:
    if not isinstance(transform, Transform):
        raise TypeError(
            f"{fn}: transform must be a jad.data.Transform; got "
            f"{type(transform).__name__}."
        )
    return transform


def _resized_hw(transform: Transform, height: int, width: int) -> tuple[int, int]:
    """(H, W) after the resize step (before cropping)."""
    if transform.size is None:
        return height, width
    if not transform.keep_aspect_ratio:
        return transform.size
    short = transform.size[0]
    # torchvision `_compute_resized_output_size`: the long side is truncated.
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _crop_box(
    transform: Transform, height: int, width: int, where: str
) -> tuple[int, int, int, int] | None:
    """PIL crop box (left, top, right, bottom) for the centre crop, or None."""
    if transform.crop is None:
        return None
    crop_h, crop_w = transform.crop
    if crop_h > height or crop_w > width:
        raise ValueError(
            f"Transform: crop {transform.crop} is larger than the resized image "
            f"{(height, width)} of {where}."
        )
    top = int(round((height - crop_h) / 2.0))  # torchvision center_crop
    left = int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


def output_size(transform: Transform, height: int, width: int) -> tuple[int, int]:
    """(H, W) that ``transform`` gives an image of size ``height`` x ``width``.

    Args:
      transform: the :class:`Transform`.
      height: input height in pixels.
      width: input width in pixels.

    Returns:
      (H, W) after resizing and cropping.

    Example:
      >>> output_size(CENTER_CROP_224, 300, 400)
      (224, 224)
      >>> output_size(Transform(size=256, keep_aspect_ratio=True), 300, 400)
      (256, 341)
    """
    transform = _check_transform("output_size", transform)
    height, width = _resized_hw(transform, height, width)
    if transform.crop is not None:
        return transform.crop
    return height, width


def map_to_input_size(
    anomaly_map, transform: Transform, height: int, width: int, *, fill: float
) -> np.ndarray:
    """An anomaly map of a transformed image, brought back to the file's geometry.

    Undoes ``transform``'s geometry: the map (at the transformed size) is placed in
    the resized frame at the centre crop's position, the cropped-away border is
    ``fill`` (nothing was scored there), and the frame is resized bilinearly
    (align_corners False, as :func:`jad.ops.resize`) to ``height`` x ``width``.

    Args:
      anomaly_map: (h, w) float map of the transformed image
        (``output_size(transform, height, width)``).
      transform: the :class:`Transform` the image was read with.
      height: the file's height in pixels.
      width: the file's width in pixels.
      fill: the value of the cropped-away border (e.g. the detector's nominal
        minimum).

    Returns:
      (height, width) float32 map.

    Raises:
      ValueError: the map is not (h, w) of the transformed size.
    """
    from jad import ops

    amap = np.asarray(anomaly_map, np.float32)
    expected = output_size(transform, height, width)
    if amap.shape != tuple(expected):
        raise ValueError(
            f"map_to_input_size: anomaly_map must be {tuple(expected)} (the "
            f"transformed size of a {height}x{width} image); got {amap.shape}."
        )
    resized_h, resized_w = _resized_hw(transform, height, width)
    box = _crop_box(transform, resized_h, resized_w, "the image")
    if box is not None:
        frame = np.full((resized_h, resized_w), fill, np.float32)
        left, top, right, bottom = box
        frame[top:bottom, left:right] = amap
        amap = frame
    if amap.shape == (height, width):
        return amap
    return np.asarray(ops.resize(amap[None], (height, width), method="bilinear"))[0]


def _to_pil(fn: str, name: str, image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(
            f"{fn}: {name} must be a PIL image or a uint8/uint16 array; got dtype "
            f"{array.dtype}."
        )
    if array.ndim in (2, 3) and 0 in array.shape[:2]:
        raise ValueError(f"{fn}: {name} is empty (shape {array.shape}).")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        if array.dtype == np.uint16:
            return Image.fromarray(array.astype(np.int32), mode="I")
        return Image.fromarray(array, mode="L")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        return Image.fromarray(array, mode="RGB" if array.shape[-1] == 3 else "RGBA")
    raise ValueError(
        f"{fn}: {name} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (uint16 only "
        f"for grayscale); got shape {array.shape} {array.dtype}."
    )


def _geometry(
    image: Image.Image, transform: Transform, resample, where: str
) -> Image.Image:
    """Resize then centre-crop ``image`` as ``transform`` says."""
    height, width = image.height, image.width
    new_h, new_w = _resized_hw(transform, height, width)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), resample=resample)
    box = _crop_box(transform, new_h, new_w, where)
    if box is not None:
        image = image.crop(box)
    return image


def preprocess_image(
    image, *, transform: Transform = DEFAULT_TRANSFORM, where: str = "the image"
) -> np.ndarray:
    """Converts one decoded image to an (H, W, 3) float32 array as ``transform`` says.

    Grayscale ("L", "1"), grayscale+alpha, palette ("P", "PA"), RGBA, CMYK and YCbCr
    images become RGB through PIL's ``convert("RGB")``, as every reference pipeline
    does; an alpha channel is dropped, not composited. 16-bit grayscale ("I;16*",
    "I") is scaled by 1/65535, resized in float and repeated on three channels.

    Args:
      image: a PIL image, or a uint8 (H, W) / (H, W, 1) / (H, W, 3) / (H, W, 4) or
        uint16 (H, W) array.
      transform: the :class:`Transform` (default: 256x256 bilinear, normalised).
      where: what to call the image in error messages (a path).

    Returns:
      (H, W, 3) float32, ImageNet-normalised when ``transform.normalize`` (else in
      ``[0, 1]``), of size :func:`output_size`.

    Raises:
      TypeError: ``image`` is neither a PIL image nor a uint8/uint16 array.
      ValueError: an unsupported PIL mode (32-bit float "F") or a crop larger than
        the resized image.

    Example:
      >>> import numpy as np
      >>> gray = np.full((10, 20), 255, np.uint8)
      >>> out = preprocess_image(gray, transform=Transform(size=8, normalize=False))
      >>> out.shape, out.dtype, float(out.min())
      ((8, 8, 3), dtype('float32'), 1.0)
    """
    transform = _check_transform("preprocess_image", transform)
    image = _to_pil("preprocess_image", "image", image)
    resample = _RESAMPLE[transform.resample]
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image, dtype=np.float32) / np.float32(_WIDE_MAX)
        wide = Image.fromarray(np.clip(wide, 0.0, 1.0), mode="F")
        out = np.asarray(_geometry(wide, transform, resample, where), np.float32)
        out = np.repeat(out[..., None], 3, axis=-1)
    elif image.mode == "F":
        raise ValueError(
            f"preprocess_image: {where} is a 32-bit float image (PIL mode 'F'), whose "
            "value range is unknown; convert it to 8 or 16 bits."
        )
    else:
        if image.mode != "RGB":
            image = image.convert("RGB")
        out = np.asarray(_geometry(image, transform, resample, where), np.float32)
        out = out / np.float32(255.0)
    if transform.normalize:
        out = normalize_imagenet(out)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocess_mask(
    mask,
    *,
    transform: Transform = DEFAULT_TRANSFORM,
    threshold: int = 127,
    where: str = "the mask",
) -> np.ndarray:
    """Converts one decoded mask to (H, W) bool with the image's geometry.

    The mask is read as 8-bit grayscale (``convert("L")``; palette masks through their
    palette, 16-bit masks scaled by 255/65535), resized with nearest neighbour to the
    size :func:`output_size` gives, cropped like the image, then binarised with
    ``> threshold``. Nearest resampling followed by the threshold is what the
    reference pipelines do (the official PatchCore and PaDiM code, anomalib); MVTec AD,
    BTAD and MTD masks are 0/255 (MTD's are anti-aliased, hence the threshold 127),
    VisA's hold small class indices (use ``threshold=0``). A 0/1 mask is not rescaled:
    with the default threshold it is all False (the dataset loaders warn about such
    empty masks of defective images, see :class:`~jad.data.EmptyMaskWarning`).

    Args:
      mask: a PIL image, or a uint8 (H, W) / (H, W, 1) / (H, W, 3) or uint16 (H, W)
        array.
      transform: the image's :class:`Transform` (only its geometry is used).
      threshold: defective where the 8-bit value is greater than this (0..254).
      where: what to call the mask in error messages (a path).

    Returns:
      (H, W) bool, True on defective pixels.

    Raises:
      TypeError: ``mask`` is neither a PIL image nor a uint8/uint16 array.
      ValueError: a 32-bit float mask, a bad ``threshold`` or a crop larger than the
        resized mask.

    Example:
      >>> import numpy as np
      >>> m = np.zeros((4, 4), np.uint8); m[:2, :2] = 255
      >>> preprocess_mask(m, transform=Transform(size=2)).tolist()
      [[True, False], [False, False]]
    """
    transform = _check_transform("preprocess_mask", transform)
    threshold = _checks.check_int(
        "preprocess_mask", "threshold", threshold, low=0, high=254
    )
    mask = _mask_levels(_to_pil("preprocess_mask", "mask", mask), where)
    mask = _geometry(mask, transform, Image.Resampling.NEAREST, where)
    return np.asarray(mask) > threshold


def _mask_levels(mask: Image.Image, where: str) -> Image.Image:
    """A decoded mask as 8-bit grayscale ("L"), the scale the threshold applies to."""
    if mask.mode in _WIDE_MODES:
        scaled = np.asarray(mask, dtype=np.float64) * (255.0 / _WIDE_MAX)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if mask.mode == "F":
        raise ValueError(
            f"preprocess_mask: {where} is a 32-bit float image (PIL mode 'F'); save "
            "masks as 8-bit images."
        )
    return mask if mask.mode == "L" else mask.convert("L")


def _open(fn: str, path, kind: str) -> Image.Image:
    """Opens and fully decodes ``path``; any failure is a DatasetError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError as err:
        raise DatasetError(f"{fn}: {kind} file not found: {os.fspath(path)}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"{fn}: cannot read {kind} file {os.fspath(path)} ({err})."
        ) from err


def load_image(path, *, transform: Transform = DEFAULT_TRANSFORM) -> np.ndarray:
    """Reads an image file and preprocesses it with :func:`preprocess_image`.

    Args:
      path: image file (any format PIL reads: PNG, JPEG, BMP, TIFF...).
      transform: the :class:`Transform`.

    Returns:
      (H, W, 3) float32.

    Raises:
      DatasetError: the file is missing, unreadable, truncated or corrupt, or in an
        unsupported mode (the message names the file).
    """
    image = _open("load_image", path, "image")
    try:
        return preprocess_image(image, transform=transform, where=os.fspath(path))
    except ValueError as err:
        raise DatasetError(f"load_image: {err}") from err


def load_mask(
    path, *, transform: Transform = DEFAULT_TRANSFORM, threshold: int = 127
) -> np.ndarray:
    """Reads a mask file and preprocesses it with :func:`preprocess_mask`.

    Args:
      path: mask file.
      transform: the image's :class:`Transform`.
      threshold: defective where the 8-bit value is greater than this.

    Returns:
      (H, W) bool.

    Raises:
      DatasetError: the file is missing, unreadable or corrupt (the message names it).
    """
    mask = _open("load_mask", path, "mask")
    try:
        return preprocess_mask(
            mask, transform=transform, threshold=threshold, where=os.fspath(path)
        )
    except ValueError as err:
        raise DatasetError(f"load_mask: {err}") from err
