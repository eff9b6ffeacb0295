"""VisA, the Visual Anomaly dataset (Zou et al., ECCV 2022), through its split CSV.

Layout (``VisA_20220922.tar`` as extracted)::

    <root>/split_csv/1cls.csv
    <root>/candle/Data/Images/Normal/0000.JPG ...
    <root>/candle/Data/Images/Anomaly/000.JPG ...
    <root>/candle/Data/Masks/Anomaly/000.png ...

The CSV (columns ``object,split,label,image,mask``; ``split`` in train/test, ``label``
in normal/anomaly; ``image`` and ``mask`` relative to ``<root>``) defines the dataset:
the standard one-class protocol is ``split_csv/1cls.csv``. Masks hold small class
indices, so they are binarised with ``> 0``. The split CSV names no defect type: it is
read from the object's ``<root>/<object>/image_anno.csv`` (columns ``image,label,mask``,
``label`` the defect description, e.g. "scratch" or "melt, scratch"), and is "anomaly"
when that file is absent or does not list the image. Rows keep the CSV's order.
"""

from __future__ import annotations

import csv
import os

from jad.data.base import (
    GOOD,
    Dataset,
    OnError,
    SampleFile,
    _check_category,
    _check_split,
    _finish,
    _Problems,
    _require_dir,
)
from jad.data.preprocess import DEFAULT_TRANSFORM, Transform
from jad.errors import DatasetError

__all__ = ["VISA_CATEGORIES", "VISA_SPLIT_CSV", "list_visa_categories", "load_visa"]

VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VISA_SPLIT_CSV = os.path.join("split_csv", "1cls.csv")
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}
_ANOMALY = "anomaly"


def _read_rows(fn: str, root, split_csv) -> tuple[str, list[tuple[int, dict]]]:
    path = split_csv if os.path.isabs(split_csv) else os.path.join(root, split_csv)
    if not os.path.isfile(path):
        raise DatasetError(f"{fn}: VisA split CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetError(
                    f"{fn}: the split CSV lacks the column(s) {', '.join(missing)} "
                    f"(expected {','.join(_COLUMNS)}): {path}"
                )
            # Line numbers count the header as line 1.
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{fn}: cannot read the split CSV {path} ({err}).") from err
    return path, rows


def _read_defect_types(fn: str, root, category: str) -> dict[str, str]:
    """Image path (relative to ``root``, normalised) -> defect description."""
    path = os.path.join(root, category, "image_anno.csv")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [
                c for c in ("image", "label") if c not in (reader.fieldnames or ())
            ]
            if missing:
                raise DatasetError(
                    f"{fn}: the annotation CSV lacks the column(s) "
                    f"{', '.join(missing)} (expected image,label,mask): {path}"
                )
            return {
                os.path.normpath((row["image"] or "").strip()): (
                    row["label"] or ""
                ).strip()
                for row in reader
                if (row["label"] or "").strip()
            }
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(
            f"{fn}: cannot read the annotation CSV {path} ({err})."
        ) from err


def list_visa_categories(root, *, split_csv: str = VISA_SPLIT_CSV) -> tuple[str, ...]:
    """Objects named in VisA's split CSV.

    Args:
      root: the VisA root (holding ``split_csv/`` and the object folders).
      split_csv: the split file, relative to ``root`` (or absolute).

    Returns:
      Sorted object names.

    Raises:
      DatasetError: ``root`` or the CSV is missing, or the CSV lacks a column.
    """
    root = _require_dir("list_visa_categories", root, "VisA root")
    _, rows = _read_rows("list_visa_categories", root, split_csv)
    return tuple(sorted({row["object"] for _, row in rows}))


def load_visa(
    root,
    category: str,
    split: str,
    *,
    split_csv: str = VISA_SPLIT_CSV,
    transform: Transform = DEFAULT_TRANSFORM,
    on_error: OnError = "raise",
    verify: bool = False,
    num_train: int | None = None,
) -> Dataset:
    """Lists one VisA object split from the split CSV (lazy).

    Args:
      root: the VisA root (holding ``split_csv/`` and the object folders).
      category: an object, e.g. "candle".
      split: "train" or "test".
      split_csv: the split file, relative to ``root`` (or absolute); the default
        ``split_csv/1cls.csv`` is the standard one-class protocol.
      transform: how images and masks are read (:class:`~jad.data.Transform`).
      on_error: "raise" (default) or "skip" problem rows with a warning each.
      verify: decode every file (and check mask sizes) now rather than when loading.
      num_train: keep only the first k training images (CSV order).

    Returns:
      A lazy :class:`~jad.data.Dataset` with ``mask_threshold=0``.

    Raises:
      DatasetError: a missing root or CSV, a missing column, an unknown object (the
        valid ones are listed), a row with an unknown split or label, a listed image
        or mask that does not exist, an anomalous row without a mask, an
        ``image_anno.csv`` that cannot be read or lacks its columns.
    """
    fn = "load_visa"
    split = _check_split(fn, split)
    problems = _Problems(fn, on_error)
    root = _require_dir(fn, root, "VisA root")
    csv_path, rows = _read_rows(fn, root, split_csv)
    _check_category(fn, category, sorted({r["object"] for _, r in rows}), root)
    defect_types = _read_defect_types(fn, root, category)
    samples = []
    for line, row in rows:
        if row["object"] != category:
            continue
        where = f"{csv_path} line {line}"
        row_split = (row["split"] or "").strip().lower()
        label_name = (row["label"] or "").strip().lower()
        if row_split not in ("train", "test"):
            raise DatasetError(
                f"{fn}: unknown split {row['split']!r} (expected train or test) in "
                f"{where}"
            )
        if label_name not in _LABELS:
            raise DatasetError(
                f"{fn}: unknown label {row['label']!r} (expected normal or anomaly) "
                f"in {where}"
            )
        if row_split != split:
            continue
        image = os.path.join(root, (row["image"] or "").strip())
        if not (row["image"] or "").strip() or not os.path.isfile(image):
            problems.report(image, f"image listed in {where} not found")
            continue
        label = _LABELS[label_name]
        if label == 0:
            samples.append(SampleFile(image, None, 0, GOOD))
            continue
        mask_name = (row["mask"] or "").strip()
        if not mask_name:
            problems.report(image, f"anomalous image without a mask in {where}")
            continue
        mask = os.path.join(root, mask_name)
        if not os.path.isfile(mask):
            problems.report(mask, f"mask listed in {where} not found")
            continue
        defect = defect_types.get(os.path.normpath((row["image"] or "").strip()))
        samples.append(SampleFile(image, mask, 1, defect or _ANOMALY))
    return _finish(
        fn,
        kind="visa",
        root=root,
        category=category,
        split=split,
        samples=samples,
        problems=problems,
        transform=transform,
        verify=verify,
        num_train=num_train,
        mask_threshold=0,
    )
