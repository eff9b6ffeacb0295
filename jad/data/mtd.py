"""Magnetic Tile Defect dataset (Huang, Qiu, Yuan, The Visual Computer 2020).

Original layout (the authors' repository)::

    <root>/MT_Free/Imgs/exp0_num_743.jpg   (952 defect-free; an all-black .png beside
                                            each, which jad does not need)
    <root>/MT_Blowhole/Imgs/<stem>.jpg     with its mask <stem>.png beside it
    <root>/MT_Break/ MT_Crack/ MT_Fray/ MT_Uneven/   (392 defective images in all)

Grayscale JPEGs of varying sizes (about 103-632 x 222-403) become 3-channel RGB and are
resized by the transform (jad's protocol: :data:`~jad.data.SQUARE_224`, a plain
224x224 bilinear resize). Masks are anti-aliased 8-bit: binarised with ``> 127``.

Split (there is no official one; the papers hold out 20% of the defect-free images):
jad uses a seeded split, the one every MTD figure of jad uses —
``MT_Free/Imgs/*.jpg`` sorted by file name, ``p = default_rng(seed).permutation(952)``,
the first ``floor(0.2 * 952) = 190`` of ``p`` are test-good, the other 762 (in ``p``
order, so ``num_train=k`` takes a seeded subsample) are train; every defective image is
a test image. The seed (default 0) is recorded in ``Dataset.seed``.

Empty masks: four ``MT_Uneven`` masks are empty in the data (and a fifth,
``exp3_num_24829``, becomes empty at 224x224). jad keeps these images labelled
anomalous with their empty masks, as anomalib does: they count for image-level
metrics and contribute no region to PRO or pixel positives. Like any empty mask of a
defective image they are listed in ``Dataset.empty_masks`` and reported by a
:class:`~jad.data.EmptyMaskWarning` once decoded; since these are expected, silence it
with ``warnings.filterwarnings("ignore", category=jad.data.EmptyMaskWarning)``.
"""

from __future__ import annotations

import os

from jad import _checks
from jad.data.base import (
    GOOD,
    Dataset,
    OnError,
    SampleFile,
    _check_category,
    _check_fraction,
    _check_split,
    _entries,
    _finish,
    _is_image,
    _Problems,
    _require_dir,
    seeded_split,
)
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform

__all__ = ["MTD_CATEGORY", "MTD_DEFECT_TYPES", "list_mtd_categories", "load_mtd"]

MTD_CATEGORY = "magnetic_tile"
MTD_DEFECT_TYPES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
_FREE = "MT_Free"
_IMAGE_EXT = ".jpg"
_MASK_EXT = ".png"


def list_mtd_categories(root) -> tuple[str, ...]:
    """MTD has one category, ``"magnetic_tile"``, present when ``MT_Free/`` is.

    Args:
      root: the folder holding ``MT_Free/``, ``MT_Blowhole/`` ...

    Returns:
      ``("magnetic_tile",)``, or ``()`` when ``MT_Free/Imgs`` is missing.

    Raises:
      DatasetError: ``root`` is not a folder.
    """
    root = _require_dir("list_mtd_categories", root, "MTD root")
    return (MTD_CATEGORY,) if os.path.isdir(os.path.join(root, _FREE, "Imgs")) else ()


def _pairs(folder, problems: _Problems, *, need_mask: bool):
    """(image path, mask path or None) for the .jpg/.png pairs of one Imgs folder."""
    images, masks = {}, {}
    for name in _entries(folder):
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        if os.path.isdir(path) or not _is_image(name):
            problems.report(path, "unexpected entry in an MTD Imgs folder")
        elif ext.lower() == _IMAGE_EXT:
            images[stem] = path
        elif ext.lower() == _MASK_EXT:
            masks[stem] = path
        else:
            problems.report(
                path, "unexpected image type (MTD images are .jpg, masks .png)"
            )
    for stem in sorted(set(masks) - set(images)):
        problems.report(masks[stem], "mask without its image")
    out = []
    for stem in sorted(images):
        mask = masks.get(stem)
        if need_mask and mask is None:
            problems.report(images[stem], "test image without its ground-truth mask")
            continue
        out.append((images[stem], mask))
    return out


def load_mtd(
    root,
    split: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
    category: str | None = None,
) -> Dataset:
    """Lists the MTD train or test split with jad's seeded protocol (lazy).

    Args:
      root: the MTD root (holding ``MT_Free/``, ``MT_Blowhole/`` ...).
      split: "train" (80% of ``MT_Free``) or "test" (the other 20% of ``MT_Free``,
        then every defective image, sorted by defect folder and file name).
      seed: seed of the split (:func:`~jad.data.seeded_split`); 0 is the one every
        MTD figure of jad uses.
      test_fraction: fraction of defect-free images held out for testing.
      transform: how images and masks are read; use :data:`~jad.data.SQUARE_224` for
        jad's MTD protocol (the images have varying sizes, so ``size`` must be set to
        batch them).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file (and check mask sizes) now rather than when loading.
      num_train: keep only the first k training images in permutation order (a
        seeded subsample).
      category: None or "magnetic_tile" (MTD has one category; accepted for
        :func:`~jad.data.load_dataset`).

    Returns:
      A lazy :class:`~jad.data.Dataset` (``kind="mtd"``, ``seed`` recorded). Defect
      types are "good" and the folder names without ``MT_`` ("Blowhole" ...); every
      ``MT_<Defect>`` folder present is read. Images with empty masks stay anomalous
      (see :attr:`~jad.data.Dataset.empty_masks`).

    Raises:
      DatasetError: a missing ``MT_Free/Imgs`` or ``MT_<Defect>/Imgs`` folder, a
        defective image without its mask, a mask without its image, an unexpected
        or (with ``verify``) unreadable file.
    """
    fn = "load_mtd"
    split = _check_split(fn, split)
    seed = _checks.check_int(fn, "seed", seed, low=0)
    _check_fraction(fn, test_fraction)
    problems = _Problems(fn, on_error)
    root = _require_dir(fn, root, "MTD root")
    if category is not None:
        _check_category(fn, category, (MTD_CATEGORY,), root)
    free = os.path.join(root, _FREE, "Imgs")
    _require_dir(fn, free, "MT_Free/Imgs")
    # The split is drawn over the full sorted listing of the defect-free JPEGs, before
    # any file is skipped, so that it is the same whatever happens to other files.
    free_pairs = _pairs(free, problems, need_mask=False)
    train, test = seeded_split(len(free_pairs), test_fraction=test_fraction, seed=seed)
    chosen = train if split == "train" else test
    samples = [SampleFile(free_pairs[i][0], None, 0, GOOD) for i in chosen]
    if split == "test":
        for name in _entries(root):
            folder = os.path.join(root, name)
            if name == _FREE or not name.startswith("MT_") or not os.path.isdir(folder):
                continue
            imgs = os.path.join(folder, "Imgs")
            _require_dir(fn, imgs, f"{name}/Imgs")
            defect = name[len("MT_") :]
            samples += [
                SampleFile(image, mask, 1, defect)
                for image, mask in _pairs(imgs, problems, need_mask=True)
            ]
    return _finish(
        fn,
        kind="mtd",
        root=root,
        category=MTD_CATEGORY,
        split=split,
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=num_train,
        seed=seed,
    )
