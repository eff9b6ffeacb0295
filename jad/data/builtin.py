"""A small built-in anomaly-detection data set in the MVTec AD layout, made offline.

The demo and the end-to-end tests need real images without a download. scikit-image
ships three 512x512 grey photographs of industrial-looking textures (``brick``,
``grass``, ``gravel``); :func:`builtin_dataset` turns each into a category:

- nominal images: random 256x256 crops of the photograph, randomly flipped, resized to
  ``size`` (antialiased bilinear), tinted to a fixed colour per category and scaled by a
  random gain in [0.92, 1.08];
- defects, made with :func:`jad.data.cutpaste.cut_paste` (F2PAD eq. 16, §IV-A.1) on
  other nominal images, with exact ground truth: ``color`` (a random-colour blob or
  ellipse), ``scratch`` (a thin random-colour bent line) and ``structural`` (a blob
  filled with the photograph at half the scale turned by 90 degrees: the texture with
  the wrong grain and orientation; clear on brick, subtle on grass and gravel).

Layout (as MVTec AD, 8-bit RGB PNGs, masks 0/255 grey PNGs)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...
    <root>/<category>/manifest.json

The manifest records the format version, the build settings and the SHA-256 of every
file. A category whose manifest is missing a file, lists a wrong checksum or other
settings is rebuilt; a build is written to a temporary folder and renamed into place,
so an interrupted build never looks complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jad import _checks
from jad.data.cutpaste import cut_paste, random_defect_mask
from jad.errors import DatasetError
from jad.ops import resize

__all__ = ["BUILTIN_CATEGORIES", "BUILTIN_DEFECTS", "builtin_dataset"]

BUILTIN_CATEGORIES = ("brick", "grass", "gravel")
BUILTIN_DEFECTS = ("color", "scratch", "structural")
# Bump whenever the generated images change (any change to the recipe below).
_VERSION = 1
_FORMAT = "jad-builtin"
_MANIFEST = "manifest.json"
_TEXTURE_SIDE = 512
_CROP = 256
# Colour given to each grey photograph (RGB gains).
_TINTS = {
    "brick": (1.0, 0.72, 0.58),
    "grass": (0.78, 1.0, 0.62),
    "gravel": (0.96, 0.93, 0.86),
}
_GAIN_RANGE = (0.92, 1.08)
# Defect recipes: mask shapes, scale range, far threshold of cut_paste.
_COLOR_SCALE = (0.6, 1.4)
_SCRATCH_SCALE = (1.0, 1.5)
_STRUCTURAL_SCALE = (1.0, 2.0)
# Structural defects: a pasted texture is often close to the original colour, so the
# push is gentle (factor 0.9) to keep the pasted structure visible; cut_paste then
# guarantees a distance >= 0.04 > sqrt(3)/255 (still exact after 8-bit quantisation).
_STRUCTURAL_DISTANCE = 0.04
_STRUCTURAL_FACTOR = 0.9
# Temporary build folders older than this are debris of an interrupted build.
_STALE_SECONDS = 3600.0


def _default_root() -> Path:
    env = os.environ.get("JAD_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "jad"
    return base / "builtin"


def _texture(category: str) -> np.ndarray:
    """(512, 512) float32 grey photograph in [0, 1] from scikit-image's bundled data."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "builtin_dataset needs scikit-image for its bundled photographs: "
            "pip install scikit-image (or jad[test])."
        ) from err
    image = np.asarray(getattr(skimage.data, category)())
    if image.shape != (_TEXTURE_SIDE, _TEXTURE_SIDE) or image.dtype != np.uint8:
        raise DatasetError(
            f"builtin_dataset: skimage.data.{category}() is not a 512x512 uint8 grey "
            f"image (got {image.shape} {image.dtype}); this scikit-image is not "
            "supported."
        )
    return image.astype(np.float32) / 255.0


def _nominal(key, texture, tint, size, crop=_CROP):
    """One (size, size, 3) crop of the texture on the 8-bit grid (values q / 255)."""
    k_y, k_x, k_flip, k_gain = jax.random.split(key, 4)
    top = jax.random.randint(k_y, (), 0, _TEXTURE_SIDE - crop + 1)
    left = jax.random.randint(k_x, (), 0, _TEXTURE_SIDE - crop + 1)
    grey = jax.lax.dynamic_slice(texture, (top, left), (crop, crop))
    flip = jax.random.bernoulli(k_flip, 0.5, (2,))
    grey = jnp.where(flip[0], grey[::-1], grey)
    grey = jnp.where(flip[1], grey[:, ::-1], grey)
    if size != crop:
        grey = resize(grey, (size, size), antialias=True)
    gain = jax.random.uniform(k_gain, (), jnp.float32, *_GAIN_RANGE)
    rgb = jnp.clip(grey[..., None] * tint * gain, 0.0, 1.0)
    return jnp.round(rgb * 255.0) / 255.0


# Batched stages, each compiled once per shape. XLA compile time dominates small
# builds, so the stages are six small programs, and they loop with lax.map rather than
# vmap (a loop body compiles 2-3x faster than its batched version; the run time of
# these few images does not matter).
@functools.partial(jax.jit, static_argnames=("size", "crop"))
def _nominal_images(keys, texture, tint, *, size, crop=_CROP):
    return jax.lax.map(lambda k: _nominal(k, texture, tint, size, crop), keys)


@functools.partial(jax.jit, static_argnames=("shape", "kind"))
def _source_masks(keys, *, shape, kind):
    return jax.lax.map(lambda k: random_defect_mask(k, shape, kind=kind), keys)


@jax.jit
def _paste_colour(keys, images, sources, low, high):
    def one(args):
        key, image, source, lo, hi = args
        return cut_paste(key, image, source, scale_range=(lo, hi))

    return jax.lax.map(one, (keys, images, sources, low, high))


@jax.jit
def _paste_structural(keys, images, sources, others):
    def one(args):
        key, image, source, other = args
        return cut_paste(
            key,
            image,
            source,
            kind="structural",
            other_image=other,
            scale_range=_STRUCTURAL_SCALE,
            min_distance=_STRUCTURAL_DISTANCE,
            factor=_STRUCTURAL_FACTOR,
        )

    return jax.lax.map(one, (keys, images, sources, others))


def _to_uint8(images) -> np.ndarray:
    return np.asarray(jnp.round(images * 255.0)).astype(np.uint8)


def _generate(category: str, seed: int, size: int, counts: dict) -> dict:
    """All arrays of one category: uint8 images, bool masks and the nominal sources.

    Returns ``{"train": (n, S, S, 3), "test_good": ..., "defects": {name: (nominal,
    image, mask)}}``. Computed on the CPU so that a GPU/TPU host builds the same data.
    """
    n_train, n_good = counts["num_train"], counts["num_test_good"]
    m = counts["num_test_defect"]
    # zlib.crc32 is stable across processes (hash() of a str is not).
    base = jax.random.fold_in(jax.random.key(seed), zlib.crc32(category.encode()))
    with jax.default_device(jax.devices("cpu")[0]):
        texture = jnp.asarray(_texture(category))
        tint = jnp.asarray(_TINTS[category], jnp.float32)
        # Nominal images: train, test good, 3 m defect backgrounds (color, scratch,
        # structural).
        keys = jax.random.split(jax.random.fold_in(base, 0), n_train + n_good + 3 * m)
        nominal = _nominal_images(keys, texture, tint, size=size)
        start = n_train + n_good
        backgrounds = nominal[start:]
        # Structural sources: the whole photograph at half the scale (finer grain),
        # turned by 90 degrees, so the pasted texture is out of place in every
        # category (grass and gravel look the same turned).
        keys = jax.random.split(jax.random.fold_in(base, 4), m)
        others = _nominal_images(keys, texture, tint, size=size, crop=_TEXTURE_SIDE)
        others = jnp.swapaxes(others, 1, 2)
        # Mask sources at half the image size, scaled by cut_paste.
        half = (size // 2, size // 2)
        keys = jax.random.split(jax.random.fold_in(base, 1), 4 * m)
        blobs = _source_masks(keys[: 2 * m], shape=half, kind="blob")
        ellipses = _source_masks(keys[2 * m : 3 * m], shape=half, kind="ellipse")
        scratches = _source_masks(keys[3 * m :], shape=half, kind="scratch")
        use_blob = jax.random.bernoulli(jax.random.fold_in(base, 2), 0.5, (m,))
        colour_sources = jnp.where(use_blob[:, None, None], blobs[:m], ellipses)
        keys = jax.random.split(jax.random.fold_in(base, 3), 3 * m)
        scale = np.array([_COLOR_SCALE] * m + [_SCRATCH_SCALE] * m, np.float32)
        coloured = _paste_colour(
            keys[: 2 * m],
            backgrounds[: 2 * m],
            jnp.concatenate([colour_sources, scratches]),
            scale[:, 0],
            scale[:, 1],
        )
        structural = _paste_structural(
            keys[2 * m :], backgrounds[2 * m :], blobs[m:], others
        )
        images = jnp.concatenate([coloured.image, structural.image])
        masks = jnp.concatenate([coloured.mask, structural.mask])
        backgrounds, images = _to_uint8(backgrounds), _to_uint8(images)
        masks = np.asarray(masks)
        nominal = _to_uint8(nominal[:start])
    return {
        "train": nominal[:n_train],
        "test_good": nominal[n_train:],
        "defects": {
            defect: (
                backgrounds[i * m : (i + 1) * m],
                images[i * m : (i + 1) * m],
                masks[i * m : (i + 1) * m],
            )
            for i, defect in enumerate(BUILTIN_DEFECTS)
        },
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(category: str, seed: int, size: int, counts: dict) -> dict:
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "category": category,
        "source": f"skimage.data.{category}",
        "seed": seed,
        "size": size,
        **counts,
        "defects": list(BUILTIN_DEFECTS),
    }


def _build(folder: Path, category: str, seed: int, size: int, counts: dict) -> None:
    """Writes one complete category (images, masks, manifest) into ``folder``."""
    arrays = _generate(category, seed, size, counts)
    files = []
    for split, name in (("train", "train"), ("test", "test_good")):
        for i, image in enumerate(arrays[name]):
            files.append((f"{split}/good/{i:03d}.png", image))
    for defect, (_, images, masks) in arrays["defects"].items():
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            files.append((f"test/{defect}/{i:03d}.png", image))
            mask_png = mask.astype(np.uint8) * 255
            files.append((f"ground_truth/{defect}/{i:03d}_mask.png", mask_png))
    checksums = {}
    for relative, array in files:
        _write_png(folder / relative, array)
        checksums[relative] = _sha256(folder / relative)
    digest = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    manifest = {
        **_settings(category, seed, size, counts),
        "jax_version": jax.__version__,
        "digest": digest,
        "files": checksums,
    }
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _is_complete(folder: Path, settings: dict) -> bool:
    """True when ``folder`` holds exactly the manifest's files with their checksums."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest["files"], dict):
            return False
        if any(manifest.get(k) != v for k, v in settings.items()):
            return False
        listed = manifest["files"]
        present = {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != _MANIFEST
        }
        if present != set(listed):
            return False
        return all(_sha256(folder / rel) == sha for rel, sha in listed.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_counts(fn, num_train, num_test_good, num_test_defect) -> dict:
    return {
        "num_train": _checks.check_int(fn, "num_train", num_train, low=1),
        "num_test_good": _checks.check_int(fn, "num_test_good", num_test_good, low=1),
        "num_test_defect": _checks.check_int(
            fn, "num_test_defect", num_test_defect, low=1
        ),
    }


def builtin_dataset(
    *,
    root: str | os.PathLike | None = None,
    category: str | Sequence[str] = "brick",
    seed: int = 0,
    size: int = 256,
    num_train: int = 40,
    num_test_good: int = 10,
    num_test_defect: int = 6,
    overwrite: bool = False,
) -> Path:
    """Writes (or finds, if already complete) the built-in data set; returns its root.

    Real photographs from scikit-image's bundled data (no download), cut into
    nominal images, with cut-paste defects (F2PAD eq. 16, §IV-A.1) whose masks are
    exact: a mask pixel is set exactly where the defective image differs from the
    nominal image it was made from. Same settings, same machine and JAX version: the
    same bytes (generation runs on the CPU).

    Args:
      root: folder holding the categories. Default ``$JAD_CACHE/builtin``, or
        ``~/.cache/jad/builtin`` when ``JAD_CACHE`` is unset.
      category: one of ``BUILTIN_CATEGORIES`` (``"brick"``, ``"grass"``,
        ``"gravel"``) or a sequence of them.
      seed: int >= 0; the whole data set is a function of it.
      size: side of the square images, 32 <= size <= 512 (crops of 256x256 pixels of
        the 512x512 photograph are resized to it).
      num_train: nominal training images (``train/good``).
      num_test_good: nominal test images (``test/good``).
      num_test_defect: test images per defect type (``color``, ``scratch``,
        ``structural``), each with ``ground_truth/<defect>/<stem>_mask.png``.
      overwrite: rebuild even when a complete copy exists, and replace a folder
        ``<root>/<category>`` that has no manifest.

    Returns:
      ``Path`` of ``root``; the images of a category are under ``root / category``
      in the MVTec AD layout (see the module docstring). With the defaults a category
      is 40 train and 28 test images of 256x256 (about 10 MB).

    Raises:
      ValueError: unknown category, bad seed, size or counts.
      TypeError: non-int seed, size or counts.
      DatasetError: ``<root>/<category>`` exists, is not a jad built-in data set (no
        manifest) and ``overwrite`` is false.
      ImportError: scikit-image is not installed.

    Note:
      A category is rebuilt when its manifest is unreadable, lists other settings or
      another format version, or when a file is missing, extra or has another
      SHA-256. The build writes into ``<root>/.tmp-<category>-<random>`` and renames
      it into place, so an interrupted build leaves only a temporary folder (removed
      by a later build of that category once an hour old), never a category that
      looks complete.
      Different ``seed``/``size``/counts share ``<root>/<category>``: asking for
      other settings replaces it. Nominal images are 8-bit quantised before the
      defect is pasted, and defects move every mask pixel by at least 0.2 (colour
      and scratch) or 0.04 (structural; Euclidean over RGB in [0, 1] units, more than
      the 8-bit rounding), so the masks stay exact in the PNGs.

    Example:
      >>> import tempfile
      >>> from jad.data.builtin import builtin_dataset
      >>> root = builtin_dataset(root=tempfile.mkdtemp(), size=32, num_train=2,
      ...                        num_test_good=1, num_test_defect=1)
      >>> sorted(p.name for p in (root / "brick" / "test").iterdir())
      ['color', 'good', 'scratch', 'structural']
    """
    fn = "builtin_dataset"
    categories = (category,) if isinstance(category, str) else tuple(category)
    if not categories:
        raise ValueError(f"{fn}: category must name at least one category.")
    for name in categories:
        _checks.check_choice(fn, "category", name, BUILTIN_CATEGORIES)
    seed = _checks.check_int(fn, "seed", seed, low=0)
    size = _checks.check_int(fn, "size", size, low=32, high=512)
    counts = _check_counts(fn, num_train, num_test_good, num_test_defect)
    root = _default_root() if root is None else Path(root).expanduser()
    for name in dict.fromkeys(categories):
        _ensure_category(fn, root, name, seed, size, counts, overwrite)
    return root


def _ensure_category(fn, root, category, seed, size, counts, overwrite) -> None:
    target = root / category
    settings = _settings(category, seed, size, counts)
    if target.exists():
        if not overwrite and _is_complete(target, settings):
            return
        if not overwrite and not (target / _MANIFEST).exists():
            raise DatasetError(
                f"{fn}: {target} exists and is not a jad built-in data set (no "
                f"{_MANIFEST}); remove it, choose another root, or pass "
                "overwrite=True."
            )
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".tmp-{category}-*"):
        # Left by an interrupted build (not one that may still be running).
        if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    work = root / f".tmp-{category}-{uuid.uuid4().hex}"
    try:
        _build(work / category, category, seed, size, counts)
        if target.exists():
            # Move the old copy aside first: a rename onto a non-empty folder fails.
            old = work / "old"
            target.rename(old)
        try:
            (work / category).rename(target)
        except OSError:
            # Another process put a copy in place meanwhile; keep it if complete.
            if not _is_complete(target, settings):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
