"""Describable Textures Dataset (Cimpoi et al., CVPR 2014) from a plain folder.

DTD is the source of the texture patterns that PAE (the projecting autoencoder) pastes
into training images as synthetic corruptions. Layout (the official archive
``dtd-r1.0.1.tar.gz`` as extracted, or any subset of its classes)::

    <root>/images/<class>/<class>_NNNN.jpg

Only ``images/`` is read (the official ``labels/`` splits are not needed to draw
textures). Textures are returned as a :class:`~jad.data.Dataset` whose items have
label 0 and the texture class as ``defect_type``; by default they are read in
``[0, 1]`` (``Transform(normalize=False)``), as corruptions are mixed with raw images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from jad.data.base import (
    Dataset,
    OnError,
    SampleFile,
    _check_category,
    _finish,
    _image_files,
    _Problems,
    _require_dir,
    _subdirs,
)
from jad.data.preprocess import Transform

__all__ = ["TEXTURE_TRANSFORM", "list_dtd_classes", "load_dtd"]

# Textures are mixed with un-normalised images: 256x256, values in [0, 1].
TEXTURE_TRANSFORM = Transform(size=256, normalize=False)


def _images_dir(fn: str, root) -> str:
    root = _require_dir(fn, root, "DTD root")
    images = os.path.join(root, "images")
    _require_dir(fn, images, "DTD images")
    return images


def list_dtd_classes(root) -> tuple[str, ...]:
    """Texture classes of a DTD-layout folder (the subfolders of ``images/``).

    Args:
      root: the folder holding ``images/``.

    Returns:
      Sorted class names.

    Raises:
      DatasetError: ``root`` or ``root/images`` is missing.
    """
    return tuple(_subdirs(_images_dir("list_dtd_classes", root)))


def load_dtd(
    root,
    *,
    classes: Sequence[str] | None = None,
    transform: Transform = TEXTURE_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
) -> Dataset:
    """Lists the texture images of a DTD-layout folder (lazy).

    Args:
      root: the folder holding ``images/<class>/*.jpg``.
      classes: the classes to read (default: all, sorted).
      transform: how textures are read (default :data:`TEXTURE_TRANSFORM`: 256x256
        bilinear, in ``[0, 1]``).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file now rather than when loading.

    Returns:
      A lazy :class:`~jad.data.Dataset` (``kind="dtd"``, ``split="all"``,
      ``has_masks=False``); ``defect_type`` holds each texture's class.

    Raises:
      DatasetError: a missing folder, an unknown class (the valid ones are listed),
        an unexpected or (with ``verify``) unreadable file.

    Example:
      >>> textures = load_dtd("data/dtd", classes=["banded"])  # doctest: +SKIP
      >>> len(textures)  # doctest: +SKIP
      120
    """
    fn = "load_dtd"
    problems = _Problems(fn, on_error)
    images = _images_dir(fn, root)
    root = os.path.dirname(images)
    valid = _subdirs(images)
    if classes is None:
        classes = valid
    elif isinstance(classes, str):
        raise TypeError(f"{fn}: classes must be a sequence of names; got {classes!r}.")
    samples = []
    for name in classes:
        _check_category(fn, name, valid, images)
        samples += [
            SampleFile(p, None, 0, name)
            for p in _image_files(os.path.join(images, name), problems)
        ]
    return _finish(
        fn,
        kind="dtd",
        root=root,
        category=None,
        split="all",
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=None,
        has_masks=False,
    )
