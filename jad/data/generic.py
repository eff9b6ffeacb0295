"""Your own images: a folder of good images, optional defect images and masks.

Layout (every folder given explicitly; names are free)::

    good_dir/        normal images (training, and the held-out test share)
    test_good_dir/   optional normal test images
    defect_dir/      optional anomalous test images: either the images themselves
                     (defect type "defect") or one subfolder per defect type
    mask_dir/        optional masks mirroring defect_dir: <stem><mask_suffix>.<ext>

When ``test_good_dir`` is not given, ``test_fraction`` of ``good_dir`` is held out
for testing with the seeded split of the MTD protocol (:func:`~jad.data.seeded_split`).
Without ``mask_dir`` anomalous images have all-zero masks and ``has_masks`` is False
(only image-level metrics apply).
"""

from __future__ import annotations

import os

from jad import _checks
from jad.data.base import (
    GOOD,
    Dataset,
    OnError,
    SampleFile,
    _check_fraction,
    _check_split,
    _entries,
    _finish,
    _image_files,
    _masks_by_stem,
    _pair_masks,
    _Problems,
    _require_dir,
    _subdirs,
    seeded_split,
)
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform

__all__ = ["load_folder"]

_DEFECT = "defect"


def _defect_groups(fn: str, defect_dir, problems: _Problems) -> list[tuple[str, str]]:
    """[(defect type, folder)]: the subfolders, or the folder itself (flat)."""
    subdirs = _subdirs(defect_dir)
    if not subdirs:
        return [(_DEFECT, os.fspath(defect_dir))]
    for name in _entries(defect_dir):
        if name not in subdirs:
            problems.report(
                os.path.join(defect_dir, name),
                "file beside defect-type subfolders (put it in one of them)",
            )
    return [(name, os.path.join(defect_dir, name)) for name in subdirs]


def load_folder(
    split: str,
    *,
    good_dir,
    defect_dir=None,
    test_good_dir=None,
    mask_dir=None,
    mask_suffix: str = "",
    test_fraction: float = 0.2,
    seed: int = 0,
    mask_threshold: int = 127,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
) -> Dataset:
    """Lists a split of a dataset kept in plain folders (lazy).

    Args:
      split: "train" or "test".
      good_dir: folder of normal images.
      defect_dir: folder of anomalous test images, or of one subfolder per defect
        type (the subfolder names become the defect types); None for none.
      test_good_dir: folder of normal test images; None to hold out
        ``test_fraction`` of ``good_dir`` instead.
      mask_dir: folder of masks mirroring ``defect_dir`` (same subfolders); None when
        there are no masks.
      mask_suffix: a mask is named ``<image stem><mask_suffix>.<any image ext>``
        (e.g. "_mask" for MVTec-style names).
      test_fraction: share of ``good_dir`` held out for testing when
        ``test_good_dir`` is None (0 for none).
      seed: seed of that split (:func:`~jad.data.seeded_split`).
      mask_threshold: masks are True where the 8-bit value is greater than this.
      transform: how images and masks are read (:class:`~jad.data.Transform`).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file (and check mask sizes) now rather than when loading.
      num_train: keep only the first k training images.

    Returns:
      A lazy :class:`~jad.data.Dataset` (``kind="folder"``); training images are in
      sorted order when ``test_good_dir`` is given, else in permutation order.

    Raises:
      DatasetError: a missing folder, a defect image without its mask (when
        ``mask_dir`` is given), a mask without its image, an unexpected or (with
        ``verify``) unreadable file.
    """
    fn = "load_folder"
    split = _check_split(fn, split)
    seed = _checks.check_int(fn, "seed", seed, low=0)
    mask_threshold = _checks.check_int(
        fn, "mask_threshold", mask_threshold, low=0, high=254
    )
    if not isinstance(mask_suffix, str):
        raise TypeError(f"{fn}: mask_suffix must be a str; got {mask_suffix!r}.")
    _check_fraction(fn, test_fraction)
    problems = _Problems(fn, on_error)
    good_dir = _require_dir(fn, good_dir, "good_dir")
    defect_dir, test_good_dir, mask_dir = (
        None if folder is None else _require_dir(fn, folder, name)
        for name, folder in (
            ("defect_dir", defect_dir),
            ("test_good_dir", test_good_dir),
            ("mask_dir", mask_dir),
        )
    )
    if mask_dir is not None and defect_dir is None:
        raise ValueError(f"{fn}: mask_dir needs defect_dir (the images it annotates).")
    good = _image_files(good_dir, problems)
    if test_good_dir is None:
        train_idx, test_idx = seeded_split(
            len(good), test_fraction=test_fraction, seed=seed
        )
        train_good = [good[i] for i in train_idx]
        test_good = [good[i] for i in test_idx]
    else:
        train_good, test_good = good, _image_files(test_good_dir, problems)
    if split == "train":
        samples = [SampleFile(p, None, 0, GOOD) for p in train_good]
    else:
        samples = [SampleFile(p, None, 0, GOOD) for p in test_good]
        if defect_dir is not None:
            for defect, folder in _defect_groups(fn, defect_dir, problems):
                images = _image_files(folder, problems)
                if mask_dir is None:
                    samples += [SampleFile(p, None, 1, defect) for p in images]
                    continue
                masks_folder = (
                    os.fspath(mask_dir)
                    if defect == _DEFECT and folder == os.fspath(defect_dir)
                    else os.path.join(mask_dir, defect)
                )
                _require_dir(fn, masks_folder, f"mask folder for {defect!r}")
                masks = _masks_by_stem(masks_folder, problems, mask_suffix)
                samples += _pair_masks(images, masks, problems, defect)
    return _finish(
        fn,
        kind="folder",
        root=good_dir,
        category=None,
        split=split,
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=num_train,
        mask_threshold=mask_threshold,
        has_masks=mask_dir is not None,
        seed=seed if test_good_dir is None else None,
    )
