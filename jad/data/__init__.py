"""Datasets for anomaly detection: lazy loaders, batching and preprocessing.

Loaders read the standard layouts from a local folder — MVTec AD, BTAD, Magnetic Tile
Defect (with jad's seeded split), VisA (through its split CSV), plain folders of your
own images, and DTD texture folders — and return a lazy :class:`Dataset`: a file list
whose images are decoded only when ``dataset[i]`` or ``dataset.batches(n)`` asks for
them. Batches are NHWC float32 numpy arrays (ImageNet-normalised by default), bool
masks, int32 labels, defect types and paths, ready for ``jax.device_put``. Defective
images whose masks are empty as loaded (e.g. 0/1 masks) are reported by an
:class:`EmptyMaskWarning` and listed in ``Dataset.empty_masks``.

Example:
  >>> import jad.data as data  # doctest: +SKIP
  >>> test = data.load_dataset("mvtec", "~/mvtec_ad", "bottle", "test",
  ...                          transform=data.CENTER_CROP_224)  # doctest: +SKIP
  >>> for batch in test.batches(32):  # doctest: +SKIP
  ...     images = jax.device_put(batch.images)  # (32, 224, 224, 3) float32

The TFDS builders live in :mod:`jad.data.tfds` (optional extra ``jad[tfds]``).
"""

from jad.data.base import (
    IMAGE_EXTENSIONS,
    Batch,
    Dataset,
    EmptyMaskWarning,
    Sample,
    SampleFile,
    SkippedFile,
    seeded_split,
)
from jad.data.btad import BTAD_CATEGORIES, list_btad_categories, load_btad
from jad.data.builtin import BUILTIN_CATEGORIES, BUILTIN_DEFECTS, builtin_dataset
from jad.data.cutpaste import CutPasteResult, cut_paste, random_defect_mask
from jad.data.datasets import KINDS, list_categories, load_dataset
from jad.data.dtd import TEXTURE_TRANSFORM, list_dtd_classes, load_dtd
from jad.data.generic import load_folder
from jad.data.mtd import MTD_CATEGORY, MTD_DEFECT_TYPES, list_mtd_categories, load_mtd
from jad.data.mvtec import MVTEC_CATEGORIES, list_mvtec_categories, load_mvtec
from jad.data.preprocess import (
    CENTER_CROP_224,
    DEFAULT_TRANSFORM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SQUARE_224,
    Transform,
    denormalize_imagenet,
    load_image,
    load_mask,
    map_to_input_size,
    normalize_imagenet,
    output_size,
    preprocess_image,
    preprocess_mask,
)
from jad.data.visa import (
    VISA_CATEGORIES,
    VISA_SPLIT_CSV,
    list_visa_categories,
    load_visa,
)

__all__ = [
    "BTAD_CATEGORIES",
    "BUILTIN_CATEGORIES",
    "BUILTIN_DEFECTS",
    "CENTER_CROP_224",
    "DEFAULT_TRANSFORM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "KINDS",
    "MTD_CATEGORY",
    "MTD_DEFECT_TYPES",
    "MVTEC_CATEGORIES",
    "SQUARE_224",
    "TEXTURE_TRANSFORM",
    "VISA_CATEGORIES",
    "VISA_SPLIT_CSV",
    "Batch",
    "CutPasteResult",
    "Dataset",
    "EmptyMaskWarning",
    "Sample",
    "SampleFile",
    "SkippedFile",
    "Transform",
    "builtin_dataset",
    "cut_paste",
    "denormalize_imagenet",
    "list_btad_categories",
    "list_categories",
    "list_dtd_classes",
    "list_mtd_categories",
    "list_mvtec_categories",
    "list_visa_categories",
    "load_btad",
    "load_dataset",
    "load_dtd",
    "load_folder",
    "load_image",
    "load_mask",
    "load_mtd",
    "load_mvtec",
    "load_visa",
    "normalize_imagenet",
    "map_to_input_size",
    "output_size",
    "preprocess_image",
    "preprocess_mask",
    "random_defect_mask",
    "seeded_split",
]
