"""One entry point for the standard layouts: load_dataset and list_categories.

``kind`` names the layout: "mvtec" (MVTec AD), "btad" (BTAD), "mtd" (Magnetic Tile
Defect) and "visa" (VisA). Each dispatches to its loader (:func:`~jad.data.load_mvtec`
...), whose docstring states the layout it reads; folders of your own images go
through :func:`~jad.data.load_folder`.
"""

from __future__ import annotations

from jad import _checks
from jad.data.base import Dataset, OnError
from jad.data.btad import list_btad_categories, load_btad
from jad.data.mtd import list_mtd_categories, load_mtd
from jad.data.mvtec import list_mvtec_categories, load_mvtec
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform
from jad.data.visa import list_visa_categories, load_visa

__all__ = ["KINDS", "list_categories", "load_dataset"]

KINDS = ("mvtec", "btad", "mtd", "visa")
_LOADERS = {"mvtec": load_mvtec, "btad": load_btad, "visa": load_visa}
_LISTERS = {
    "mvtec": list_mvtec_categories,
    "btad": list_btad_categories,
    "mtd": list_mtd_categories,
    "visa": list_visa_categories,
}


def list_categories(kind: str, root) -> tuple[str, ...]:
    """Categories present on disk for a dataset layout.

    Args:
      kind: "mvtec", "btad", "mtd" or "visa".
      root: the dataset's root folder.

    Returns:
      Sorted category names (MTD: ``("magnetic_tile",)``).

    Raises:
      ValueError: an unknown ``kind``.
      DatasetError: ``root`` (or VisA's split CSV) is missing.
    """
    kind = _checks.check_choice("list_categories", "kind", kind, KINDS)
    return _LISTERS[kind](root)


def load_dataset(
    kind: str,
    root,
    category: str | None,
    split: str,
    *,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
    **options,
) -> Dataset:
    """Lists one category split of a standard dataset (lazy; see the loaders).

    Args:
      kind: "mvtec", "btad", "mtd" or "visa".
      root: the dataset's root folder.
      category: e.g. "bottle", "01", "candle"; None (or "magnetic_tile") for MTD.
      split: "train" or "test".
      transform: how images and masks are read (:class:`~jad.data.Transform`).
      on_error: "raise" (default) or "skip" problem files with a warning each.
      verify: decode every file now rather than when loading.
      num_train: keep only the first k training images.
      **options: options of the kind's loader (MTD: ``seed``, ``test_fraction``;
        VisA: ``split_csv``).

    Returns:
      A lazy :class:`~jad.data.Dataset`.

    Raises:
      ValueError: an unknown ``kind`` or ``split``.
      TypeError: an option the kind's loader does not take.
      DatasetError: see the kind's loader.

    Example:
      >>> train = load_dataset("mtd", "data/mtd", None, "train",
      ...                      transform=SQUARE_224)  # doctest: +SKIP
      >>> len(train), train.seed  # doctest: +SKIP
      (762, 0)
    """
    kind = _checks.check_choice("load_dataset", "kind", kind, KINDS)
    common = dict(
        transform=transform, on_error=on_error, verify=verify, num_train=num_train
    )
    if kind == "mtd":
        return load_mtd(root, split, category=category, **common, **options)
    return _LOADERS[kind](root, category, split, **common, **options)
