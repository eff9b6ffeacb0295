"""tensorflow-datasets integration (optional extra: ``pip install "jad[tfds]"``).

- :func:`mvtec_builder_class` returns a TFDS ``GeneratorBasedBuilder`` for MVTec AD
  (registered as ``"mvtec_ad"``, one config per category) that reads a manual download
  (MVTec AD cannot be downloaded automatically: its licence asks users to fetch it
  themselves); :func:`prepare_mvtec_tfds` builds one category.
- :func:`load_dtd_tfds` reads the Describable Textures Dataset through TFDS's ``dtd``
  builder (it downloads the archive), the texture source of PAE's corruptions. Offline,
  :func:`jad.data.load_dtd` reads a DTD folder with no TFDS at all.

tensorflow-datasets is imported inside these functions, so ``import jad.data`` never
needs it. Nothing here needs TensorFlow: builds write ``array_record`` files (the
default here; TFDS's own default, tfrecord, needs TensorFlow) and are read with
``builder.as_data_source(split)``, which decodes with PIL into numpy. Images are stored
at their original size, not preprocessed; apply :func:`jad.data.preprocess_image`.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from jad.data import mvtec as _mvtec
from jad.errors import DatasetError as _DatasetError

__all__ = ["load_dtd_tfds", "mvtec_builder_class", "prepare_mvtec_tfds"]

_INSTALL = 'pip install "jad[tfds]"'
_DEFAULT_FORMAT = "array_record"

MVTEC_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download MVTec AD (mvtec_anomaly_detection.tar.xz) from
https://www.mvtec.com/company/research/datasets/mvtec-ad (free for non-commercial
use, CC BY-NC-SA 4.0), extract it and pass the extracted folder, the one holding
bottle/, cable/, ... as the manual directory:
`download_config=tfds.download.DownloadConfig(manual_dir=...)`, or
`jad.data.tfds.prepare_mvtec_tfds(manual_dir, category)`.
"""

_MVTEC_CITATION = """\
@article{bergmann2021mvtec,
  title={The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for
         Unsupervised Anomaly Detection},
  author={Bergmann, Paul and Batzner, Kilian and Fauser, Michael and Sattlegger,
          David and Steger, Carsten},
  journal={International Journal of Computer Vision},
  volume={129}, number={4}, pages={1038--1059}, year={2021}
}
"""


def _import_tfds():
    """tensorflow_datasets, or an ImportError that says which extra to install."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "jad.data.tfds needs tensorflow-datasets, an optional dependency: "
            f"{_INSTALL}. (TensorFlow itself is not needed.)"
        ) from err
    return tfds


@functools.cache
def mvtec_builder_class():
    """The TFDS builder class for MVTec AD (defined and registered on first call).

    The builder (name ``"mvtec_ad"``, version 1.0.0) has one config per category of
    :data:`~jad.data.MVTEC_CATEGORIES` and splits "train" and "test". It reads the
    extracted archive from the manual directory with :func:`jad.data.load_mvtec` (so
    layout problems raise the same :class:`~jad.errors.DatasetError`). Features per
    example: ``image`` (H, W, 3) uint8 RGB at the original size, ``mask`` (H, W, 1)
    uint8 0/255 (binarised with ``> 127``, zeros for good images), ``label``
    (ClassLabel good=0 / anomalous=1), ``defect_type`` and ``file_name`` (the path
    relative to the manual directory, also the example key).

    Returns:
      The ``tfds.core.GeneratorBasedBuilder`` subclass ``MVTecAD``.

    Raises:
      ImportError: tensorflow-datasets is not installed (names the extra).
    """
    tfds = _import_tfds()

    class MVTecAD(tfds.core.GeneratorBasedBuilder):
        """MVTec AD from a manual download (jad)."""

        name = "mvtec_ad"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release (jad): images, masks, labels."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = MVTEC_MANUAL_DOWNLOAD_INSTRUCTIONS
        BUILDER_CONFIGS = [
            tfds.core.BuilderConfig(name=c, description=f"MVTec AD category {c}.")
            for c in _mvtec.MVTEC_CATEGORIES
        ]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    "MVTec AD: 15 categories of industrial images; defect-free "
                    "training images, test images with pixel-precise masks."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "mask": tfds.features.Image(shape=(None, None, 1)),
                        "label": tfds.features.ClassLabel(names=["good", "anomalous"]),
                        "defect_type": tfds.features.Text(),
                        "file_name": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
                citation=_MVTEC_CITATION,
            )

        def _split_generators(self, dl_manager):
            root = os.fspath(dl_manager.manual_dir)
            return {
                split: self._generate_examples(root, split)
                for split in ("train", "test")
            }

        def _generate_examples(self, root, split):
            dataset = _mvtec.load_mvtec(root, self.builder_config.name, split)
            for sample in dataset.samples:
                key = os.path.relpath(sample.image_path, root).replace(os.sep, "/")
                yield key, _mvtec_example(sample, key)

    return MVTecAD


def _mvtec_example(sample, key: str) -> dict:
    """One TFDS example: PIL images are PNG-encoded by TFDS without TensorFlow."""
    with Image.open(sample.image_path) as image:
        image = image.convert("RGB")
    if sample.mask_path is None:
        mask = Image.new("L", image.size)
    else:
        with Image.open(sample.mask_path) as raw:
            mask = raw.convert("L")
        if mask.size != image.size:
            raise _DatasetError(
                f"mvtec_ad: mask {sample.mask_path} is {mask.size} but its image is "
                f"{image.size}."
            )
        mask = Image.fromarray(
            np.where(np.asarray(mask) > 127, 255, 0).astype(np.uint8)
        )
    return {
        "image": image,
        "mask": mask,
        "label": sample.label,
        "defect_type": sample.defect_type,
        "file_name": key,
    }


def prepare_mvtec_tfds(
    manual_dir,
    category: str,
    *,
    data_dir=None,
    file_format: str = _DEFAULT_FORMAT,
):
    """Builds (once) the TFDS dataset of one MVTec AD category from a manual download.

    Args:
      manual_dir: the extracted MVTec AD folder (holding ``bottle/`` ...).
      category: one of :data:`~jad.data.MVTEC_CATEGORIES`.
      data_dir: where TFDS writes the prepared data (default: TFDS's,
        ``~/tensorflow_datasets``).
      file_format: "array_record" (default, no TensorFlow needed) or "tfrecord"
        (needs TensorFlow).

    Returns:
      The prepared builder: ``builder.as_data_source("test")[i]`` is a dict of numpy
      values (see :func:`mvtec_builder_class`); with TensorFlow installed,
      ``builder.as_dataset(...)`` works too.

    Raises:
      ImportError: tensorflow-datasets is not installed.
      ValueError: an unknown category (the valid ones are listed).
      DatasetError: a layout problem in ``manual_dir``.

    Example:
      >>> builder = prepare_mvtec_tfds("~/mvtec_ad", "bottle")  # doctest: +SKIP
      >>> len(builder.as_data_source("train"))  # doctest: +SKIP
      209
    """
    tfds = _import_tfds()
    if category not in _mvtec.MVTEC_CATEGORIES:
        raise ValueError(
            f"prepare_mvtec_tfds: category must be one of "
            f"{', '.join(_mvtec.MVTEC_CATEGORIES)}; got {category!r}."
        )
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
        raise _DatasetError(f"prepare_mvtec_tfds: manual_dir not found: {manual_dir}")
    builder = mvtec_builder_class()(
        config=category, data_dir=data_dir, file_format=file_format
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def load_dtd_tfds(
    split: str,
    *,
    data_dir=None,
    download: bool = True,
    file_format: str = _DEFAULT_FORMAT,
):
    """The Describable Textures Dataset through TFDS's ``dtd`` builder.

    Downloads and prepares DTD on first use (needs network access, and TensorFlow:
    TFDS's ``dtd`` builder reads its split lists with ``tf.io.gfile``; Colab has it);
    reading a prepared copy needs neither. Offline, read a DTD folder with
    :func:`jad.data.load_dtd` instead.

    Args:
      split: a TFDS split of ``dtd`` ("train", "validation", "test", or slices such
        as "train+validation").
      data_dir: TFDS data folder (default: TFDS's).
      download: download and prepare if not already prepared.
      file_format: "array_record" (default, no TensorFlow needed) or "tfrecord".

    Returns:
      A random-access data source: ``source[i]`` is a dict with ``image`` (H, W, 3)
      uint8, ``label`` int and ``file_name`` bytes; ``len(source)`` images. Class
      names: ``tfds.builder("dtd").info.features["label"].names``.

    Raises:
      ImportError: tensorflow-datasets is not installed.
      DatasetError: ``download=False`` and the data is not prepared in ``data_dir``,
        or the download failed.
    """
    tfds = _import_tfds()
    where = os.fspath(data_dir) if data_dir is not None else "TFDS's default data_dir"
    builder = tfds.builder("dtd", data_dir=data_dir, file_format=file_format)
    if not builder.is_prepared():
        if not download:
            raise _DatasetError(
                f"load_dtd_tfds: the TFDS dataset 'dtd' is not prepared in {where}; "
                "call with download=True (network needed), or read a local copy "
                "with jad.data.load_dtd."
            )
        try:
            builder.download_and_prepare()
        except OSError as err:
            raise _DatasetError(
                f"load_dtd_tfds: could not download and prepare 'dtd' into {where} "
                f"({err}); read a local copy with jad.data.load_dtd instead."
            ) from err
    return builder.as_data_source(split)
