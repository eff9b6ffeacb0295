"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., ISIE 2021).

Layout assumed (the public archive ``BTech_Dataset_transformed/``, as read by anomalib
and the PatchCore/PaDiM forks)::

    <root>/01/train/ok/0000.bmp ...
    <root>/01/test/ok/0000.bmp ...
    <root>/01/test/ko/0000.bmp ...
    <root>/01/ground_truth/ko/0000.png ...

with products ``01``, ``02``, ``03``. Extensions are mixed: product 01 has .bmp images
and .png masks, 02 .png and .png, 03 .bmp and .bmp; jad pairs an image with the mask
of the same stem whatever either's extension (.bmp, .png and the other image
extensions). Masks are 0/255 (binarised with ``> 127``). Normal images get the defect
type "good", anomalous ones "ko" (BTAD has no defect types).
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
)
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform

__all__ = ["BTAD_CATEGORIES", "list_btad_categories", "load_btad"]

BTAD_CATEGORIES = ("01", "02", "03")
_OK, _KO = "ok", "ko"


def list_btad_categories(root) -> tuple[str, ...]:
    """Products present under a BTAD root (folders with ``train`` and ``test``).

    Args:
      root: the folder holding ``01/``, ``02/``, ``03/``.

    Returns:
      Sorted product names.

    Raises:
      DatasetError: ``root`` is not a folder.
    """
    return _split_categories("list_btad_categories", root, "BTAD root")


def load_btad(
    root,
    category: str,
    split: str,
    *,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
) -> Dataset:
    """Lists one BTAD product split (lazy: nothing is decoded unless ``verify``).

    Args:
      root: the BTAD root (holding ``01/``, ``02/``, ``03/``).
      category: "01", "02" or "03".
      split: "train" (``train/ok``) or "test" (``test/ok`` then ``test/ko``).
      transform: how images and masks are read (:class:`~jad.data.Transform`).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file (and check mask sizes) now rather than when loading.
      num_train: keep only the first k training images (sorted names).

    Returns:
      A lazy :class:`~jad.data.Dataset`.

    Raises:
      DatasetError: a missing folder, an unknown product (the valid ones are listed),
        a "ko" image without its mask, a mask without its image, an unexpected or
        (with ``verify``) unreadable file.
    """
    fn = "load_btad"
    split = _check_split(fn, split)
    problems = _Problems(fn, on_error)
    root = _require_dir(fn, root, "BTAD root")
    base = os.path.join(root, category) if isinstance(category, str) else ""
    if not base or not os.path.isdir(base):
        _check_category(fn, category, list_btad_categories(root), root)
    folder = os.path.join(base, split)
    _require_dir(fn, folder, f"{category} {split}")
    expected = (_OK,) if split == "train" else (_OK, _KO)
    for name in _entries(folder):
        if name not in expected:
            problems.report(
                os.path.join(folder, name),
                f"unexpected entry in {split}/ (read: {', '.join(expected)})",
            )
    _require_dir(fn, os.path.join(folder, _OK), f"{category} {split}/{_OK}")
    samples = [
        SampleFile(p, None, 0, GOOD)
        for p in _image_files(os.path.join(folder, _OK), problems)
    ]
    if split == "test":
        _require_dir(fn, os.path.join(folder, _KO), f"{category} test/{_KO}")
        truth = os.path.join(base, "ground_truth", _KO)
        _require_dir(fn, truth, f"{category} ground-truth")
        images = _image_files(os.path.join(folder, _KO), problems)
        masks = _masks_by_stem(truth, problems, "")
        samples += _pair_masks(images, masks, problems, _KO)
    return _finish(
        fn,
        kind="btad",
        root=root,
        category=category,
        split=split,
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=num_train,
    )
