"""The lazy dataset every loader returns, its items and batches, and listing helpers.

A :class:`Dataset` holds only the list of its files (:class:`SampleFile`: image path,
mask path, label, defect type); images are read and preprocessed when an item or a
batch is asked for, so iterating a category never holds it all in memory.
``dataset[i]`` gives a :class:`Sample`; ``dataset.batches(batch_size)`` yields
:class:`Batch` es of NHWC float32 numpy arrays ready for ``jax.device_put``.

Conventions shared by all loaders:

- label 0 = normal ("good"), 1 = anomalous; normal images have the defect type
  ``"good"`` and an all-zero mask;
- masks are (H, W) bool, True on defective pixels;
- problems with files (a missing folder, a test image without its mask, a mask
  without its image, an unexpected or unreadable file) raise :class:`~jad.errors.
  DatasetError` naming the file. With ``on_error="skip"`` each problem with a single
  file is reported by ``warnings.warn`` (path and reason), recorded in
  ``Dataset.skipped``, and the file is left out; nothing is dropped silently. Missing
  folders and unknown categories always raise. Hidden files (names starting with
  ".", such as ``.DS_Store``) are ignored;
- a defective image whose mask, as loaded, has no True pixel (a 0/1 mask read with
  the threshold 127, an all-black mask, a defect lost by resizing) keeps label 1 and
  its empty mask (masks are never rescaled by guessing), but is not silent: it is
  listed in ``Dataset.empty_masks`` and reported by one :class:`EmptyMaskWarning`
  naming the files. Masks are checked when they are decoded: by ``verify=True`` at
  load time, else by ``dataset[i]`` and at the end of each :meth:`Dataset.batches`
  pass; every file is warned about once per dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from jad import _checks
from jad.data.preprocess import (
    DEFAULT_TRANSFORM,
    Transform,
    _mask_levels,
    _open,
    load_image,
    load_mask,
    preprocess_mask,
)
from jad.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "Dataset",
    "EmptyMaskWarning",
    "Sample",
    "SampleFile",
    "SkippedFile",
    "seeded_split",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OnError = Literal["raise", "skip"]
_ON_ERROR = ("raise", "skip")
_SPLITS = ("train", "test")
GOOD = "good"
# At most this many files are named in an EmptyMaskWarning (then "and N more").
_MAX_NAMED = 10


class EmptyMaskWarning(UserWarning):
    """Defective images whose ground-truth masks are empty as loaded.

    Issued by a :class:`Dataset` (once per file and dataset, many files in one
    warning) when the mask of an anomalous image has no pixel above the dataset's
    ``mask_threshold`` after preprocessing. Such an image still counts as anomalous
    for image-level metrics, but pixel metrics see it as entirely normal and PRO gets
    no region from it. Typical causes, named in the message for each file: masks
    saved as 0/1 instead of 0/255 (their largest value is not above the threshold
    127), all-black masks (four of MTD's ``MT_Uneven`` masks), or a defect smaller
    than a pixel at the transform's size. ``Dataset.empty_masks`` lists the files.

    Silence it, where the empty masks are expected, with
    ``warnings.filterwarnings("ignore", category=jad.data.EmptyMaskWarning)``.
    """


class _EmptyMasks:
    """Masks of anomalous images found empty while decoding, and which were warned.

    Thread-safe: batches decode in worker threads; warnings are issued by the caller.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._found: dict[str, str] = {}  # mask path -> why it is empty
        self._warned: set[str] = set()

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self._found.setdefault(path, reason)

    def __contains__(self, path) -> bool:
        with self._lock:
            return path in self._found

    def take_unwarned(self) -> list[tuple[str, str]]:
        """(path, reason) of the masks not warned about yet; they count as warned."""
        with self._lock:
            new = [(p, r) for p, r in self._found.items() if p not in self._warned]
            self._warned.update(p for p, _ in new)
        return new


class SampleFile(NamedTuple):
    """One entry of a dataset's file list (nothing is read).

    Attributes:
      image_path: path of the image file.
      mask_path: path of the ground-truth mask, or None (normal images, and anomalous
        images of datasets without masks: their mask is all-zero).
      label: 0 normal, 1 anomalous.
      defect_type: "good" for normal images, else the defect folder's name (or the
        dataset's fixed name, e.g. "ko" for BTAD, "anomaly" for VisA).
    """

    image_path: str
    mask_path: str | None
    label: int
    defect_type: str


class Sample(NamedTuple):
    """One loaded item.

    Attributes:
      image: (H, W, 3) float32, preprocessed by the dataset's transform.
      mask: (H, W) bool, True on defective pixels (all False for normal images).
      label: 0 normal, 1 anomalous.
      defect_type: see :class:`SampleFile`.
      path: the image file.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    defect_type: str
    path: str


class Batch(NamedTuple):
    """A batch of loaded items (numpy, ready for ``jax.device_put``).

    Attributes:
      images: (B, H, W, 3) float32.
      masks: (B, H, W) bool.
      labels: (B,) int32.
      defect_types: B strings.
      paths: B image paths.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    defect_types: tuple[str, ...]
    paths: tuple[str, ...]


class SkippedFile(NamedTuple):
    """A file left out under ``on_error="skip"``, with the reason."""

    path: str
    reason: str


class _SizedIterator:
    """An iterator that knows its length (progress bars read ``len``)."""

    def __init__(self, iterator: Iterator, length: int):
        self._iterator, self._length = iterator, length

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        """Leaves the pass early (as a generator's ``close``)."""
        self._iterator.close()


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A lazily loaded anomaly-detection split: a file list plus how to read it.

    Built by the loaders (:func:`jad.data.load_dataset`, :func:`jad.data.load_mvtec`
    ...), not by hand. ``len(dataset)`` counts the files, ``dataset[i]`` reads one
    :class:`Sample`, :meth:`batches` streams :class:`Batch` es.

    Attributes:
      kind: "mvtec", "btad", "mtd", "visa", "folder" or "dtd".
      root: the dataset's root folder.
      category: the category (None where the kind has one).
      split: "train", "test" (or "all" for texture folders).
      samples: the files, in loading order.
      transform: the :class:`~jad.data.Transform` applied when loading.
      mask_threshold: masks are True where the 8-bit value is > this.
      has_masks: False when anomalous images have no ground truth (their masks are
        all-zero and must not be used for pixel metrics).
      on_error: "raise" or "skip" (see the module docstring).
      seed: the seed of the split, for kinds that draw one (MTD, folders); else None.
      skipped: files left out under ``on_error="skip"`` (grows when a file fails to
        decode during :meth:`batches`).
      empty_masks: (property) see :attr:`empty_masks`.
    """

    kind: str
    root: str
    category: str | None
    split: str
    samples: tuple[SampleFile, ...]
    transform: Transform = DEFAULT_TRANSFORM
    mask_threshold: int = 127
    has_masks: bool = True
    on_error: OnError = "raise"
    seed: int | None = None
    skipped: list[SkippedFile] = dataclasses.field(default_factory=list)
    _empty: _EmptyMasks = dataclasses.field(
        default_factory=_EmptyMasks, init=False, repr=False
    )

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        normal = sum(1 for s in self.samples if s.label == 0)
        return (
            f"Dataset(kind={self.kind!r}, category={self.category!r}, "
            f"split={self.split!r}, {len(self)} images: {normal} normal, "
            f"{len(self) - normal} anomalous, transform={self.transform}, "
            f"skipped={len(self.skipped)}, empty_masks={len(self.empty_masks)})"
        )

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32 labels of all samples (no file is read)."""
        return np.array([s.label for s in self.samples], dtype=np.int32)

    @property
    def paths(self) -> tuple[str, ...]:
        """The N image paths."""
        return tuple(s.image_path for s in self.samples)

    @property
    def empty_masks(self) -> tuple[str, ...]:
        """Mask paths of anomalous samples whose loaded mask has no True pixel.

        A mask is empty when no pixel is above ``mask_threshold`` after the
        transform's resize and crop (e.g. a 0/1 mask with the threshold 127). Such a
        sample keeps label 1: image metrics count it as anomalous, pixel metrics as
        all-normal. Masks are checked as they are decoded, so this lists what was
        found so far: everything after ``verify=True`` or after one full
        :meth:`batches` pass (what an evaluation does), else the items read until
        now. Each one is also reported, once, by an :class:`EmptyMaskWarning`.
        Mask paths (not image paths), in sample order; the samples are
        ``[s for s in dataset.samples if s.mask_path in dataset.empty_masks]``.
        """
        return tuple(
            s.mask_path
            for s in self.samples
            if s.mask_path is not None and s.mask_path in self._empty
        )

    def with_transform(self, transform: Transform) -> Dataset:
        """The same files read with another :class:`~jad.data.Transform`.

        Args:
          transform: the new transform.

        Returns:
          A new :class:`Dataset` sharing the file list (and the ``skipped`` list).
          When the new transform has the same geometry (``size``,
          ``keep_aspect_ratio``, ``crop``; e.g. only ``normalize`` differs) the masks
          are the same, so the empty masks found (and warned about) are shared too.
        """
        if not isinstance(transform, Transform):
            raise TypeError(
                "Dataset.with_transform: transform must be a jad.data.Transform; "
                f"got {type(transform).__name__}."
            )
        new = dataclasses.replace(self, transform=transform, skipped=self.skipped)
        if _geometry_of(transform) == _geometry_of(self.transform):
            object.__setattr__(new, "_empty", self._empty)
        return new

    def __getitem__(self, index: int) -> Sample:
        """Reads and preprocesses sample ``index`` (always raises on a bad file)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(
                f"Dataset[index]: index must be an int; got {type(index).__name__}."
            )
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(
                f"Dataset[index]: index {index} out of range for {n} samples."
            )
        sample = self._load(self.samples[int(index)])
        self._warn_empty_masks(stacklevel=2)
        return sample

    def _load(self, sample: SampleFile) -> Sample:
        image = load_image(sample.image_path, transform=self.transform)
        if sample.mask_path is None:
            mask = np.zeros(image.shape[:2], dtype=bool)
        else:
            _check_same_size(sample)
            mask = load_mask(
                sample.mask_path,
                transform=self.transform,
                threshold=self.mask_threshold,
            )
            if sample.label == 1 and not mask.any():
                self._empty.add(
                    sample.mask_path,
                    _why_empty(
                        _open("load_mask", sample.mask_path, "mask"),
                        self.mask_threshold,
                        mask.shape,
                        sample.mask_path,
                    ),
                )
        return Sample(image, mask, sample.label, sample.defect_type, sample.image_path)

    def _warn_empty_masks(self, *, stacklevel: int) -> None:
        """One EmptyMaskWarning naming the empty masks not warned about yet.

        ``stacklevel`` counts from the caller (1: the caller's line).
        """
        new = self._empty.take_unwarned()
        if new:
            warnings.warn(
                _empty_message(self, new), EmptyMaskWarning, stacklevel=stacklevel + 1
            )

    def _load_or_skip(self, sample: SampleFile) -> Sample | None:
        try:
            return self._load(sample)
        except DatasetError as err:
            if self.on_error == "raise":
                raise
            _warn_skip(self.skipped, sample.image_path, str(err))
            return None

    def batches(
        self,
        batch_size: int,
        *,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> Iterator[Batch]:
        """Streams the samples in order as :class:`Batch` es, loading on demand.

        Only the current batch (and, with workers, the next one) is in memory.

        Args:
          batch_size: images per batch (the last batch may be smaller).
          drop_last: drop a last batch smaller than ``batch_size``.
          num_workers: threads decoding images (0: decode in the caller's thread).
            With workers the next batch is decoded while the caller uses the
            current one. PIL releases the GIL while decoding and resizing.

        Returns:
          An iterator of :class:`Batch` with a ``len`` (the number of batches, so
          progress bars show a total and an ETA). With ``on_error="skip"`` an
          unreadable file
          is warned about, appended to ``skipped`` and left out of its batch (which is
          then smaller). Defective images with empty masks are kept; when the pass
          ends (or is left early), one :class:`EmptyMaskWarning` names those not
          warned about before, and :attr:`empty_masks` lists them all.

        Raises:
          DatasetError: an unreadable file (``on_error="raise"``).
          ValueError: images of different sizes in one batch (``transform.size`` is
            None and the files differ).
        """
        batch_size = _checks.check_int(
            "Dataset.batches", "batch_size", batch_size, low=1
        )
        num_workers = _checks.check_int(
            "Dataset.batches", "num_workers", num_workers, low=0
        )
        n = len(self.samples)
        count = n // batch_size if drop_last else -(-n // batch_size)
        return _SizedIterator(
            self._batches(batch_size, bool(drop_last), num_workers), count
        )

    def _batches(
        self, batch_size: int, drop_last: bool, num_workers: int
    ) -> Iterator[Batch]:
        # Warn from the caller's thread once the pass ends or is left (a `break`
        # closes the generator); not while another error propagates.
        try:
            yield from self._stream(batch_size, drop_last, num_workers)
        except GeneratorExit:
            self._warn_empty_masks(stacklevel=2)
            raise
        self._warn_empty_masks(stacklevel=2)

    def _stream(
        self, batch_size: int, drop_last: bool, num_workers: int
    ) -> Iterator[Batch]:
        n = len(self.samples)
        stop = n - n % batch_size if drop_last else n
        starts = list(range(0, stop, batch_size))
        groups = [self.samples[s : min(s + batch_size, stop)] for s in starts]
        if num_workers == 0:
            for group in groups:
                batch = _stack([self._load_or_skip(s) for s in group])
                if batch is not None:
                    yield batch
            return
        with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
            pending = None
            try:
                for k in range(len(groups)):
                    if pending is None:
                        pending = [
                            pool.submit(self._load_or_skip, s) for s in groups[k]
                        ]
                    current = pending
                    pending = (
                        [pool.submit(self._load_or_skip, s) for s in groups[k + 1]]
                        if k + 1 < len(groups)
                        else None
                    )
                    batch = _stack([f.result() for f in current])
                    if batch is not None:
                        yield batch
            finally:
                for future in pending or ():
                    future.cancel()


def _stack(items: Sequence[Sample | None]) -> Batch | None:
    items = [s for s in items if s is not None]
    if not items:
        return None
    shapes = {s.image.shape for s in items}
    if len(shapes) > 1:
        first = items[0]
        other = next(s for s in items if s.image.shape != first.image.shape)
        raise ValueError(
            "Dataset.batches: images of different sizes cannot share a batch: "
            f"{first.path} is {first.image.shape[:2]}, {other.path} is "
            f"{other.image.shape[:2]}; set Transform(size=...) or use batch_size=1."
        )
    return Batch(
        images=np.stack([s.image for s in items]),
        masks=np.stack([s.mask for s in items]),
        labels=np.array([s.label for s in items], dtype=np.int32),
        defect_types=tuple(s.defect_type for s in items),
        paths=tuple(s.path for s in items),
    )


def _geometry_of(transform: Transform) -> tuple:
    """What decides a loaded mask: the transform's resize and crop."""
    return transform.size, transform.keep_aspect_ratio, transform.crop


def _why_empty(mask, threshold: int, shape: tuple[int, ...], where: str) -> str:
    """Why a decoded mask (PIL image) is empty once loaded at ``shape``."""
    top = int(np.asarray(_mask_levels(mask, where)).max(initial=0))
    if top == 0:
        return "all zero"
    if top <= threshold:
        return (
            f"largest value {top}, not above the threshold {threshold}: a 0/1 or "
            "class-index mask?"
        )
    return f"empty once resized to {shape[0]}x{shape[1]}"


def _empty_message(dataset: Dataset, found: list[tuple[str, str]]) -> str:
    named = [f"{path} ({reason})" for path, reason in found[:_MAX_NAMED]]
    if len(found) > _MAX_NAMED:
        named.append(f"and {len(found) - _MAX_NAMED} more")
    what = dataset.kind + (f" {dataset.category!r}" if dataset.category else "")
    hint = "save masks with defective pixels above the threshold (0/255)"
    if dataset.kind == "folder":
        hint += ", or pass load_folder(mask_threshold=0) for 0/1 masks"
    return (
        f"jad.data: {len(found)} defective image(s) in the {dataset.split} split of "
        f"{what} have an empty ground-truth mask (no pixel > "
        f"{dataset.mask_threshold} after loading); they stay anomalous but pixel "
        "metrics count them as all-normal: "
        f"{'; '.join(named)}. Dataset.empty_masks lists them; if the masks are "
        f"wrong, {hint}."
    )


def _check_same_size(sample: SampleFile) -> None:
    """Raises DatasetError when the mask's pixel size differs from the image's."""
    sizes = []
    for path, what in ((sample.image_path, "image"), (sample.mask_path, "mask")):
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except FileNotFoundError as err:
            raise DatasetError(f"Dataset: {what} file not found: {path}") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(
                f"Dataset: cannot read {what} file {path} ({err})."
            ) from err
    if sizes[0] != sizes[1]:
        raise DatasetError(
            f"Dataset: mask {sample.mask_path} is {sizes[1][0]}x{sizes[1][1]} (WxH) "
            f"but its image {sample.image_path} is {sizes[0][0]}x{sizes[0][1]}."
        )


def _warn_skip(skipped: list[SkippedFile], path: str, reason: str) -> None:
    skipped.append(SkippedFile(path, reason))
    warnings.warn(f"jad.data: skipped {path}: {reason}", UserWarning, stacklevel=4)


class _Problems:
    """Collects per-file problems while listing: raise at once, or warn and record."""

    def __init__(self, fn: str, on_error: str):
        self.fn = fn
        self.on_error = _checks.check_choice(fn, "on_error", on_error, _ON_ERROR)
        self.skipped: list[SkippedFile] = []

    def report(self, path, reason: str) -> None:
        path = os.fspath(path)
        if self.on_error == "raise":
            raise DatasetError(f"{self.fn}: {reason}: {path}")
        _warn_skip(self.skipped, path, reason)


def seeded_split(
    n: int, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of ``n`` normal images (jad's MTD protocol).

    ``p = numpy.random.default_rng(seed).permutation(n)``; the first
    ``floor(test_fraction * n)`` entries of ``p`` are test images, the others train
    images, both in ``p`` order (so the first k train indices are a seeded subsample).
    This is jad's seeded MTD split (:func:`~jad.data.load_mtd`), the one every MTD
    figure of jad uses (n = 952, seed 0: 190 test, 762 train).

    Args:
      n: number of images, indexed in sorted file-name order.
      test_fraction: fraction held out for testing, in [0, 1).
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      (train_indices, test_indices), int64 arrays in permutation order.

    Example:
      >>> train, test = seeded_split(10, test_fraction=0.2, seed=0)
      >>> len(train), len(test)
      (8, 2)
    """
    n = _checks.check_int("seeded_split", "n", n, low=0)
    seed = _checks.check_int("seeded_split", "seed", seed, low=0)
    _check_fraction("seeded_split", test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    n_test = math.floor(test_fraction * n)
    return order[n_test:], order[:n_test]


# --- listing helpers shared by the loaders -------------------------------------------


def _check_fraction(fn: str, test_fraction) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 <= test_fraction < 1.0
    ):
        raise ValueError(
            f"{fn}: test_fraction must be in [0, 1); got {test_fraction!r}."
        )


def _check_split(fn: str, split) -> str:
    return _checks.check_choice(fn, "split", split, _SPLITS)


def _require_dir(fn: str, path, what: str) -> str:
    """``path`` as a str with ``~`` expanded; DatasetError if it is not a folder."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise DatasetError(f"{fn}: {what} folder not found: {path}")
    return path


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _entries(folder) -> list[str]:
    """Sorted entry names of ``folder``, hidden ones (".*") left out."""
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def _subdirs(folder) -> list[str]:
    return [e for e in _entries(folder) if os.path.isdir(os.path.join(folder, e))]


def _split_categories(fn: str, root, what: str) -> tuple[str, ...]:
    """Sorted sub-folders of ``root`` that hold both ``train/`` and ``test/``."""
    root = _require_dir(fn, root, what)
    return tuple(
        c
        for c in _subdirs(root)
        if os.path.isdir(os.path.join(root, c, "train"))
        and os.path.isdir(os.path.join(root, c, "test"))
    )


def _image_files(folder, problems: _Problems, *, what: str = "image") -> list[str]:
    """Sorted image file paths in ``folder``; anything else is reported."""
    out = []
    for name in _entries(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            problems.report(path, f"unexpected folder among the {what} files")
        elif not _is_image(name):
            problems.report(
                path,
                f"unexpected file among the {what} files (extensions read: "
                f"{', '.join(IMAGE_EXTENSIONS)})",
            )
        else:
            out.append(path)
    return out


def _masks_by_stem(folder, problems: _Problems, suffix: str) -> dict[str, str]:
    """{image stem: mask path} for the masks in ``folder`` (named <stem><suffix>.*)."""
    masks = {}
    for path in _image_files(folder, problems, what="mask"):
        stem = os.path.splitext(os.path.basename(path))[0]
        if suffix and not stem.endswith(suffix):
            problems.report(path, f"mask name does not end with {suffix!r}")
            continue
        stem = stem[: len(stem) - len(suffix)] if suffix else stem
        if stem in masks:
            problems.report(path, f"second mask for the image stem {stem!r}")
            continue
        masks[stem] = path
    return masks


def _pair_masks(
    images: list[str],
    masks: dict[str, str],
    problems: _Problems,
    defect_type: str,
) -> list[SampleFile]:
    """Anomalous samples with their masks; reports images without mask and orphans."""
    out = []
    used = set()
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        mask = masks.get(stem)
        if mask is None:
            problems.report(path, "test image without its ground-truth mask")
            continue
        used.add(stem)
        out.append(SampleFile(path, mask, 1, defect_type))
    for stem, mask in masks.items():
        if stem not in used:
            problems.report(mask, "mask without its image")
    return out


def _check_category(fn: str, category, valid: Sequence[str], root) -> str:
    if category not in valid:
        listed = ", ".join(repr(c) for c in valid) or "none found"
        raise DatasetError(
            f"{fn}: unknown category {category!r} under {os.fspath(root)}; valid "
            f"categories: {listed}."
        )
    return category


def _take_first(fn: str, samples: list[SampleFile], num_train, split: str):
    if num_train is None:
        return samples
    if split != "train":
        raise ValueError(
            f"{fn}: num_train applies to split='train' only; got split={split!r}."
        )
    num_train = _checks.check_int(fn, "num_train", num_train, low=1)
    if num_train > len(samples):
        raise ValueError(
            f"{fn}: num_train={num_train} but only {len(samples)} training images."
        )
    return samples[:num_train]


def _verify(
    samples: list[SampleFile],
    problems: _Problems,
    transform: Transform,
    mask_threshold: int,
) -> tuple[list[SampleFile], list[tuple[str, str]]]:
    """Decodes every file once.

    Returns the samples whose files are all readable, and (mask path, reason) for
    the anomalous ones whose mask is empty once loaded with ``transform``.
    """
    kept, empty = [], []
    for sample in samples:
        try:
            decoded = {}
            for path, what in (
                (sample.image_path, "image"),
                (sample.mask_path, "mask"),
            ):
                if path is None:
                    continue
                try:
                    with Image.open(path) as im:
                        im.load()
                        decoded[what] = im
                except (OSError, SyntaxError, ValueError) as err:
                    raise DatasetError(
                        f"cannot read {what} file {path} ({err})"
                    ) from err
            if sample.mask_path is not None:
                _check_same_size(sample)
                if sample.label == 1:
                    reason = _check_mask(
                        decoded["mask"], sample.mask_path, transform, mask_threshold
                    )
                    if reason is not None:
                        empty.append((sample.mask_path, reason))
        except DatasetError as err:
            problems.report(sample.image_path, str(err))
            continue
        kept.append(sample)
    return kept, empty


def _check_mask(mask, path: str, transform: Transform, threshold: int) -> str | None:
    """Why the decoded ``mask`` is empty once loaded, or None when it is not."""
    try:
        loaded = preprocess_mask(
            mask, transform=transform, threshold=threshold, where=path
        )
    except ValueError as err:
        raise DatasetError(f"load_mask: {err}") from err
    if loaded.any():
        return None
    return _why_empty(mask, threshold, loaded.shape, path)


def _finish(
    fn: str,
    *,
    kind: str,
    root,
    category,
    split: str,
    samples: list[SampleFile],
    problems: _Problems,
    transform,
    verify: bool,
    num_train,
    mask_threshold: int = 127,
    has_masks: bool = True,
    seed: int | None = None,
) -> Dataset:
    """Common tail of every loader: validate options, verify, take the first k."""
    if not isinstance(transform, Transform):
        raise TypeError(
            f"{fn}: transform must be a jad.data.Transform; got "
            f"{type(transform).__name__}."
        )
    samples = _take_first(fn, samples, num_train, split)
    empty = []
    if verify:
        samples, empty = _verify(samples, problems, transform, mask_threshold)
    if not samples:
        skipped = len(problems.skipped)
        raise DatasetError(
            f"{fn}: no {split} images under {os.fspath(root)}"
            + (f" (all {skipped} skipped as unreadable or unpaired)" if skipped else "")
            + "; check the folder and the split."
        )
    dataset = Dataset(
        kind=kind,
        root=os.fspath(root),
        category=category,
        split=split,
        samples=tuple(samples),
        transform=transform,
        mask_threshold=mask_threshold,
        has_masks=has_masks,
        on_error=problems.on_error,
        seed=seed,
        skipped=problems.skipped,
    )
    for path, reason in empty:
        dataset._empty.add(path, reason)
    # user -> load_<kind> -> _finish -> _warn_empty_masks
    dataset._warn_empty_masks(stacklevel=3)
    return dataset
