"""MVTec AD (Bergmann et al., CVPR 2019 / IJCV 2021) from its original folder layout.

Layout (as extracted from ``mvtec_anomaly_detection.tar.xz``)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...

Every test image of a defect folder has its mask ``<stem>_mask.png`` (0/255); good
images have none (their mask is all-zero). Files are listed in sorted order: train,
then test folder by folder (sorted names, "good" included in that order).
"""

from __future__ import annotations

import os

from jad.data.base import (
    GOOD,
    Dataset,
    OnError,
    SampleFile,
    _check_category,
    _check_split,
    _entries,
    _finish,
    _image_files,
    _masks_by_stem,
    _pair_masks,
    _Problems,
    _require_dir,
    _split_categories,
    _subdirs,
)
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform

__all__ = ["MVTEC_CATEGORIES", "list_mvtec_categories", "load_mvtec"]

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
_MASK_SUFFIX = "_mask"


def list_mvtec_categories(root) -> tuple[str, ...]:
    """Categories present under an MVTec AD root (folders with ``train`` and ``test``).

    Args:
      root: the folder holding ``bottle/``, ``cable/`` ...

    Returns:
      Sorted category names.

    Raises:
      DatasetError: ``root`` is not a folder.
    """
    return _split_categories("list_mvtec_categories", root, "MVTec AD root")


def load_mvtec(
    root,
    category: str,
    split: str,
    *,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
) -> Dataset:
    """Lists one MVTec AD category split (lazy: nothing is decoded unless ``verify``).

    Args:
      root: the MVTec AD root (holding ``bottle/``, ``cable/`` ...).
      category: e.g. "bottle" (any folder with ``train/`` and ``test/`` works).
      split: "train" (``train/good``) or "test" (every ``test/<type>`` folder).
      transform: how images and masks are read (:class:`~jad.data.Transform`).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file (and check mask sizes) now rather than when loading.
      num_train: keep only the first k training images (sorted names).

    Returns:
      A lazy :class:`~jad.data.Dataset`; defect types are the test folder names
      ("good" for normal images); masks are binarised with ``> 127``.

    Raises:
      DatasetError: a missing folder, an unknown category (the valid ones are listed),
        a test image without its mask, a mask without its image, an unexpected or
        (with ``verify``) unreadable file.
    """
    fn = "load_mvtec"
    split = _check_split(fn, split)
    problems = _Problems(fn, on_error)
    root = _require_dir(fn, root, "MVTec AD root")
    base = os.path.join(root, category) if isinstance(category, str) else ""
    if not base or not os.path.isdir(base):
        _check_category(fn, category, list_mvtec_categories(root), root)
    _require_dir(fn, os.path.join(base, split), f"{category} {split}")
    samples: list[SampleFile] = []
    if split == "train":
        folder = os.path.join(base, "train", GOOD)
        _require_dir(fn, folder, "training")
        for name in _entries(os.path.join(base, "train")):
            if name != GOOD:
                problems.report(
                    os.path.join(base, "train", name),
                    "unexpected entry in train/ (only train/good is read)",
                )
        samples = [SampleFile(p, None, 0, GOOD) for p in _image_files(folder, problems)]
    else:
        test = os.path.join(base, "test")
        truth = os.path.join(base, "ground_truth")
        types = _subdirs(test)
        for name in _entries(test):
            if name not in types:
                problems.report(os.path.join(test, name), "unexpected file in test/")
        for defect in types:
            images = _image_files(os.path.join(test, defect), problems)
            if defect == GOOD:
                samples += [SampleFile(p, None, 0, GOOD) for p in images]
                continue
            _require_dir(fn, os.path.join(truth, defect), "ground-truth")
            masks = _masks_by_stem(os.path.join(truth, defect), problems, _MASK_SUFFIX)
            samples += _pair_masks(images, masks, problems, defect)
        if os.path.isdir(truth):
            for name in _entries(truth):
                path = os.path.join(truth, name)
                if name in types and name != GOOD:
                    continue
                if os.path.isdir(path):
                    for mask in _entries(path):
                        problems.report(
                            os.path.join(path, mask), "mask without its image"
                        )
                else:
                    problems.report(path, "unexpected file in ground_truth/")
    return _finish(
        fn,
        kind="mvtec",
        root=root,
        category=category,
        split=split,
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=num_train,
    )
